"""Tests for the word2vec data path: corpus, subsampling, windows, noise words, evaluators."""

import hashlib
import math
import zipfile

import numpy as np
import pytest
import scipy.stats

from experiments.data import corpus as corpus_lib
from experiments.data import skipgram_pairs as sp
from experiments.data import word_benchmarks as wb
from experiments.runtime.errors import ConfigError

# ----------------------------------------------------------------------------- corpus


def test_tokenize_lower_cases_and_splits_on_non_word_characters():
    assert corpus_lib.tokenize("The King's <b>Crown</b>, 1066 A.D. naïve_word") == [
        "the", "king", "s", "b", "crown", "b", "1066", "a", "d", "naïve_word"]


def test_vocabulary_min_count_sorted_by_count_then_word():
    docs = [["b", "a", "c", "a", "d"], ["c", "b", "e"], ["a"]]
    corpus = corpus_lib.build_corpus(docs, min_count=2)
    assert corpus.vocab.words == ("a", "b", "c")  # a:3, then b:2 and c:2 by the word
    assert corpus.vocab.counts.tolist() == [3, 2, 2]
    # d and e are dropped from the sentences; the last sentence is kept (it has "a")
    assert corpus.ids.tolist() == [1, 0, 2, 0, 2, 1, 0]
    assert corpus.offsets.tolist() == [0, 4, 6, 7]
    assert corpus.raw_tokens == 9 and corpus.documents == 3
    assert list(corpus.sentences()) == [["b", "a", "c", "a"], ["c", "b"], ["a"]]


def test_long_documents_are_cut_into_sentences():
    corpus = corpus_lib.build_corpus([["x"] * 25], min_count=1, max_sentence_length=10)
    assert np.diff(corpus.offsets).tolist() == [10, 10, 5]


def test_empty_vocabulary_is_a_config_error():
    with pytest.raises(ConfigError, match="min_count=5"):
        corpus_lib.build_corpus([["a", "b"]], min_count=5)


def test_corpus_files_one_or_many(tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("Apple banana apple\n\nBanana, APPLE!\n", encoding="utf-8")
    two.write_text("cherry apple\n", encoding="utf-8")
    corpus = corpus_lib.load_corpus(corpus_files=f"{one},{two}", min_count=1)
    assert corpus.vocab.words == ("apple", "banana", "cherry")
    assert corpus.num_sentences == 3 and corpus.documents == 3
    assert corpus.name == "one.txt,two.txt"


@pytest.mark.parametrize("content, fragment", [(None, "could not read"),
                                               (b"caf\xe9\n", "not UTF-8")])
def test_bad_corpus_file_is_one_line_config_error(tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment) as info:
        corpus_lib.load_corpus(corpus_files=[str(path)], min_count=1)
    assert "\n" not in str(info.value)


def test_unknown_dataset_is_config_error():
    with pytest.raises(ConfigError, match="unknown --dataset"):
        corpus_lib.load_corpus("imdb")


def _text8_zip(tmp_path, text=b" anarchism originated as a term of abuse first used against"):
    archive = tmp_path / "src" / "text8.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("text8", text)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest(), hashlib.sha256(
        text).hexdigest()


def test_text8_download_verified_from_local_file(tmp_path):
    archive, zip_hash, text_hash = _text8_zip(tmp_path)
    cache = tmp_path / "cache"
    path = corpus_lib.download_text8(str(cache), url=archive.as_uri(), zip_sha256=zip_hash,
                                     sha256=text_hash)
    assert open(path, "rb").read().startswith(b" anarchism")
    archive.unlink()  # a verified cached copy needs no download
    assert corpus_lib.download_text8(str(cache), url=archive.as_uri(), zip_sha256=zip_hash,
                                     sha256=text_hash) == path
    assert sorted(p.name for p in cache.iterdir()) == ["text8"]


def test_text8_checksum_mismatch_and_missing_source(tmp_path):
    archive, _, text_hash = _text8_zip(tmp_path)
    with pytest.raises(ConfigError, match="SHA-256"):
        corpus_lib.download_text8(str(tmp_path / "c1"), url=archive.as_uri(),
                                  zip_sha256="0" * 64, sha256=text_hash)
    with pytest.raises(ConfigError, match="could not download"):
        corpus_lib.download_text8(str(tmp_path / "c2"), url=(tmp_path / "nope.zip").as_uri())
    assert not any((tmp_path / "c1").iterdir())  # nothing half-written left behind


def test_embedded_corpus_is_gensims_text():
    corpus = corpus_lib.load_corpus("gensim_text")
    assert corpus.summary() == {"corpus": "gensim_text", "documents": 656, "sentences": 671,
                                "raw_tokens": 883448, "tokens": 817053, "vocab_size": 16418}
    assert corpus.vocab.words[:4] == ("the", "of", "and", "in")
    assert np.all(np.diff(corpus.vocab.counts) <= 0) and corpus.vocab.counts[-1] == 5
    assert np.diff(corpus.offsets).max() <= corpus_lib.MAX_SENTENCE_LENGTH


# ----------------------------------------------------------------------------- subsampling


def test_keep_probabilities_match_the_formula_and_gensim():
    counts = np.array([5000, 1000, 300, 40, 5])
    n = counts.sum()
    t = 1e-2 * n
    expected = np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts)
    np.testing.assert_allclose(sp.keep_probabilities(counts, 1e-2), expected)
    assert expected[0] < 0.3 and expected[-1] == 1.0
    np.testing.assert_array_equal(sp.keep_probabilities(counts, 0), np.ones(5))
    # sample >= 1: an absolute count (gensim's shorthand)
    t = int(100 * (3 + math.sqrt(5)) / 2)
    np.testing.assert_allclose(sp.keep_probabilities(counts, 100),
                               np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts))

    from gensim.models import Word2Vec

    words = [f"w{i}" for i in range(len(counts))]
    sentences = [[w] * int(c) for w, c in zip(words, counts)]
    model = Word2Vec(vector_size=4, min_count=1, sample=1e-2, workers=1)
    model.build_vocab(sentences)
    gensim_keep = model.wv.expandos["sample_int"] / (2**32 - 1)
    ours = sp.keep_probabilities(counts, 1e-2)
    for w, p in zip(words, ours):
        assert gensim_keep[model.wv.key_to_index[w]] == pytest.approx(p, abs=1e-9)


def test_subsampling_keeps_each_word_at_its_rate():
    counts = np.array([60000, 20000, 5000, 1000])
    ids = np.repeat(np.arange(4), counts).astype(np.int32)
    keep = sp.keep_probabilities(counts, 1e-2)
    kept, offsets = sp.subsample(ids, np.array([0, 40000, ids.size]), keep,
                                 np.random.default_rng(0))
    observed = np.bincount(kept, minlength=4)
    sd = np.sqrt(counts * keep * (1 - keep)) + 1e-9
    assert np.all(np.abs(observed - counts * keep) < 5 * sd)
    assert offsets[0] == 0 and offsets[-1] == kept.size


# ----------------------------------------------------------------------------- pairs


def _reference_pairs(ids, offsets, keep, window, seed, epoch):
    """word2vec's loops, one pair at a time, with the pipeline's random draws."""
    rng = np.random.default_rng([seed, epoch])
    mask = rng.random(len(ids)) < keep[ids]
    sentences = [[int(w) for w, m in zip(ids[a:b], mask[a:b]) if m]
                 for a, b in zip(offsets[:-1], offsets[1:])]
    reach = rng.integers(1, window + 1, size=sum(map(len, sentences)), dtype=np.int32)
    pairs, position = [], 0
    for sentence in sentences:
        for i, centre in enumerate(sentence):
            b = int(reach[position + i])
            for j in range(max(0, i - b), min(len(sentence), i + b + 1)):
                if j != i:
                    pairs.append((centre, sentence[j]))
        position += len(sentence)
    return pairs


@pytest.mark.parametrize("sample, window", [(0.0, 3), (0.05, 4), (0.05, 1)])
def test_pairs_match_slow_reference(sample, window):
    rng = np.random.default_rng(7)
    counts_draw = rng.zipf(1.6, 400) % 30
    ids = counts_draw.astype(np.int32)
    offsets = np.array([0, 3, 4, 4, 90, 200, 201, 400])
    counts = np.bincount(ids, minlength=30) + 1
    pipe = sp.SkipGramPipeline(ids, offsets, counts, window=window, sample=sample, seed=3,
                               shuffle=False)
    expected = _reference_pairs(ids, offsets, pipe.keep, window, 3, 2)
    targets, contexts, _ = pipe.epoch_pairs(2)
    assert list(zip(targets.tolist(), contexts.tolist())) == expected
    shuffled = sp.SkipGramPipeline(ids, offsets, counts, window=window, sample=sample, seed=3)
    t2, c2, _ = shuffled.epoch_pairs(2)
    assert sorted(zip(t2.tolist(), c2.tolist())) == sorted(expected)
    assert list(zip(t2.tolist(), c2.tolist())) != expected


def test_reduced_window_uses_distance_d_with_probability_w_minus_d_plus_1_over_w():
    ids = np.arange(20000, dtype=np.int32)  # position == id, one sentence
    counts = np.ones(20000, np.int64)
    pipe = sp.SkipGramPipeline(ids, [0, 20000], counts, window=5, sample=0, seed=0,
                               shuffle=False)
    targets, contexts, _ = pipe.epoch_pairs(0)
    distance = np.abs(targets.astype(np.int64) - contexts)
    per_distance = np.bincount(distance, minlength=6)[1:] / (2 * 20000)
    np.testing.assert_allclose(per_distance, (5 - np.arange(5)) / 5, atol=0.01)


def test_epochs_are_deterministic_and_differ():
    ids = np.random.default_rng(1).integers(0, 50, 3000).astype(np.int32)
    counts = np.bincount(ids, minlength=50)

    def batches(epoch):
        pipe = sp.SkipGramPipeline(ids, [0, 3000], counts, seed=5, sample=1e-2)
        return list(pipe.batches(epoch, 64, chunk_batches=3))

    a, b, c = batches(1), batches(1), batches(2)
    assert len(a) == len(b) and all(
        np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert not np.array_equal(a[0]["target"], c[0]["target"])


# ----------------------------------------------------------------------------- noise words


@pytest.mark.parametrize("alpha", [0.0, 0.75, 1.0])
def test_noise_distribution_chi_square(alpha):
    counts = np.array([400, 150, 60, 20, 7, 0, 3, 1])
    sampler = sp.AliasNegativeSampler(counts, alpha, seed=11)
    draws = sampler.sample(10, batch_size=40_000).ravel()
    observed = np.bincount(draws, minlength=len(counts))
    assert observed[5] == 0  # never a word with count 0
    p = np.where(counts > 0, counts.astype(float) ** alpha, 0.0)
    p /= p.sum()
    support = counts > 0
    _, pvalue = scipy.stats.chisquare(observed[support], draws.size * p[support])
    assert pvalue > 1e-3
    np.testing.assert_allclose(sampler.probabilities, p)


def test_accidental_hits_are_redrawn_from_the_renormalised_distribution():
    counts = np.array([500, 200, 50, 10, 2])
    sampler = sp.AliasNegativeSampler(counts, 0.75, seed=2)
    positives = np.zeros(50_000, np.int64)  # the most frequent word, P_n(0) ~ 0.5
    negatives = sampler.sample(5, positives=positives)
    assert not (negatives == 0).any()
    p = counts[1:] ** 0.75 / np.sum(counts[1:] ** 0.75)
    observed = np.bincount(negatives.ravel(), minlength=5)[1:]
    assert scipy.stats.chisquare(observed, negatives.size * p)[1] > 1e-3


def test_pipeline_negatives_never_equal_the_context_and_follow_p_n():
    ids = np.random.default_rng(0).zipf(1.3, 20000).astype(np.int32) % 40
    counts = np.bincount(ids, minlength=40)
    pipe = sp.SkipGramPipeline(ids, [0, ids.size], counts, window=3, num_negatives=4, seed=1)
    batches = list(pipe.batches(0, 256))
    contexts = np.concatenate([b["context"].ravel() for b in batches])
    negatives = np.concatenate([b["negatives"].reshape(-1, 4) for b in batches])
    assert negatives.shape == (contexts.size, 4)
    assert not sp.accidental_hits(contexts, negatives).any()
    # Frequent words are drawn less often than their frequency, rare ones more often.
    freq = counts / counts.sum()
    drawn = np.bincount(negatives.ravel(), minlength=40) / negatives.size
    top, rare = counts.argmax(), np.where(counts > 0, counts, counts.max()).argmin()
    assert drawn[top] < freq[top] and drawn[rare] > freq[rare] > 0


def test_shared_negatives_one_set_per_batch_and_hits_masked():
    ids = np.random.default_rng(0).integers(0, 6, 3000).astype(np.int32)
    counts = np.bincount(ids, minlength=6)
    pipe = sp.SkipGramPipeline(ids, [0, ids.size], counts, window=2, num_negatives=3, seed=1,
                               shared_negatives=True)
    chunk = next(pipe.batches(0, 100, chunk_batches=4))
    negatives = chunk["negatives"]
    assert negatives.shape == (4, 100, 3)
    assert (negatives == negatives[:, :1]).all()  # every row of a batch repeats one set
    assert not (negatives[0, 0] == negatives[1, 0]).all() or not (
        negatives[1, 0] == negatives[2, 0]).all()
    hits = sp.accidental_hits(chunk["context"][0], negatives[0])
    assert hits.any()  # with 6 words, shared sets must collide somewhere
    np.testing.assert_array_equal(hits, negatives[0] == chunk["context"][0][:, None])


def test_dataset_elements_and_cardinality():
    ids = np.random.default_rng(0).integers(0, 30, 5000).astype(np.int32)
    counts = np.bincount(ids, minlength=30)
    pipe = sp.SkipGramPipeline(ids, [0, 2500, 5000], counts, window=2, num_negatives=3, seed=4)
    dataset = pipe.dataset(0, 128, chunk_batches=5)
    expected = list(pipe.batches(0, 128, chunk_batches=5))
    steps = pipe.num_batches(0, 128)
    assert int(dataset.cardinality()) == steps
    elements = list(dataset.as_numpy_iterator())
    assert len(elements) == steps
    assert elements[0]["target"].shape == (128,) and elements[0]["negatives"].shape == (128, 3)
    np.testing.assert_array_equal(
        np.stack([e["negatives"] for e in elements]),
        np.concatenate([b["negatives"] for b in expected]))
    rest = list(pipe.dataset(0, 128, drop_remainder=False).as_numpy_iterator())
    assert len(rest) == pipe.num_batches(0, 128, drop_remainder=False)
    assert sum(len(e["target"]) for e in rest) == pipe.epoch_pairs(0)[0].size


# ----------------------------------------------------------------------------- evaluators


def _hand_built():
    """Vectors where gender and royalty are axes: king - man + woman == queen exactly."""
    words = ["man", "woman", "king", "queen", "boy", "girl", "prince", "princess", "apple"]
    gender = {"man": 0, "boy": 0, "king": 0, "prince": 0}
    royal = {"king", "queen", "prince", "princess"}
    young = {"boy", "girl", "prince", "princess"}
    vectors = []
    for w in words:
        if w == "apple":
            vectors.append([0, 0, 0, 0, 1])
            continue
        vectors.append([1.0 if gender.get(w, 1) else -1.0, 1.0 if w in royal else 0.0,
                        1.0 if w in young else 0.0, 1.0, 0.0])
    return np.array(vectors, np.float32), words


def test_analogies_on_hand_built_vectors():
    vectors, words = _hand_built()
    sections = [
        ("family", [("man", "woman", "king", "queen"), ("boy", "girl", "prince", "princess"),
                    ("man", "king", "woman", "queen"), ("man", "woman", "king", "apple"),
                    ("man", "woman", "king", "unknownword")]),
        ("gram-royal", [("man", "king", "boy", "prince")]),
    ]
    result = wb.evaluate_analogies(vectors, words, sections, total_questions=10)
    assert result["answered"] == 5 and result["correct"] == 4
    assert result["coverage"] == 0.5 and result["accuracy"] == 0.8
    assert result["semantic"] == {"accuracy": 0.75, "correct": 3, "answered": 4, "questions": 5}
    assert result["syntactic"]["accuracy"] == 1.0
    assert [s["correct"] for s in result["sections"]] == [3, 1]
    top = wb.analogy_candidates(vectors, words, "man", "king", "woman", k=3)
    assert top[0][0] == "queen" and top[0][1] > 0.95 > top[1][1]
    assert {"man", "king", "woman"}.isdisjoint(w for w, _ in top)
    # restrict_vocab: "queen" (row 3) outside the first 3 words -> the question is skipped
    assert wb.evaluate_analogies(vectors, words, sections, restrict_vocab=3)["answered"] == 0


def test_word_pairs_and_neighbours_on_hand_built_vectors():
    angles = np.array([0.0, 0.3, 0.9, 1.5])
    vectors = np.stack([np.cos(angles), np.sin(angles)], 1)
    words = ["a", "b", "c", "d"]
    pairs = [("a", "b", 9.0), ("a", "c", 5.0), ("A", "d", 1.0), ("b", "d", 3.0),
             ("a", "zzz", 2.0)]
    pairs = [(x.lower(), y, s) for x, y, s in pairs]
    result = wb.evaluate_word_pairs(vectors, words, pairs)
    assert result["spearman"] == pytest.approx(1.0)
    assert result["covered"] == 4 and result["coverage"] == 0.8
    neighbours = wb.nearest_neighbours(vectors, words, ["a", "missing"], k=2)
    assert list(neighbours) == ["a"]
    assert [w for w, _ in neighbours["a"]] == ["b", "c"]
    assert neighbours["a"][0][1] == pytest.approx(math.cos(0.3), abs=1e-6)


def test_evaluators_agree_with_gensim(tmp_path):
    from gensim.models import KeyedVectors

    sections = wb.load_analogies()
    rng = np.random.default_rng(0)
    vocab = []
    for _, questions in sections[:6]:  # the words of six sections, in file order
        for q in questions[::7]:
            vocab += [w for w in q if w not in vocab]
    for a, b, _ in wb.load_word_pairs(wb.datapath(wb.WORDSIM_FILE))[:150]:
        vocab += [w for w in (a, b) if w not in vocab]
    vocab = vocab[:600] + ["King", "QUEEN"]  # odd spellings: the first spelling wins
    vectors = rng.normal(size=(len(vocab), 20)).astype(np.float32)
    # Give the capital -> country sections a shared offset so many questions are right.
    offset = rng.normal(size=20) * 3
    index = {w: i for i, w in enumerate(vocab)}
    for _, questions in sections[:2]:
        for a, b, _, _ in questions:
            if a in index and b in index:
                vectors[index[b]] = vectors[index[a]] + offset + rng.normal(size=20) * 0.5
    kv = KeyedVectors(20)
    kv.add_vectors(vocab, vectors)
    restrict = 500
    ours = wb.evaluate_analogies(vectors, vocab, sections, restrict_vocab=restrict)
    score, theirs = kv.evaluate_word_analogies(wb.datapath(wb.ANALOGY_FILE),
                                               restrict_vocab=restrict)
    assert ours["correct"] > 20 and ours["answered"] > ours["correct"]
    assert ours["accuracy"] == pytest.approx(score)
    by_name = {s["section"]: s for s in theirs}
    for s in ours["sections"]:
        if s["answered"]:
            assert s["correct"] == len(by_name[s["section"]]["correct"]), s["section"]
            assert s["answered"] == s["correct"] + len(by_name[s["section"]]["incorrect"])
    for name in (wb.WORDSIM_FILE, wb.SIMLEX_FILE):
        mine = wb.evaluate_word_pairs(vectors, vocab, wb.datapath(name), restrict_vocab=restrict)
        pearson, spearman, oov = kv.evaluate_word_pairs(wb.datapath(name),
                                                        restrict_vocab=restrict)
        assert mine["spearman"] == pytest.approx(spearman[0], abs=1e-5)
        assert mine["pearson"] == pytest.approx(pearson[0], abs=1e-5)
        assert 100 * (1 - mine["coverage"]) == pytest.approx(oov)


def test_next_epoch_built_in_the_background_equals_one_built_on_demand():
    rng = np.random.default_rng(5)
    ids = (rng.zipf(1.5, 5000) % 50).astype(np.int32)
    counts = np.bincount(ids, minlength=50) + 1
    background = sp.SkipGramPipeline(ids, [0, 2000, 5000], counts, window=3, sample=0.01,
                                     seed=9)
    on_demand = sp.SkipGramPipeline(ids, [0, 2000, 5000], counts, window=3, sample=0.01,
                                    seed=9)
    background.dataset(0, 16, prefetch_next=True)
    assert 1 in background._epochs  # epoch 1 is being built (or built) already
    for epoch in (0, 1):
        for a, b in zip(background.epoch_pairs(epoch), on_demand.epoch_pairs(epoch)):
            np.testing.assert_array_equal(a, b)
    assert list(background._epochs) == [1]  # older epochs are let go
