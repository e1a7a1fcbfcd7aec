"""word2vec topic: a tiny end-to-end run, the SGNS loss, sparse updates, projector files."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from experiments import word2vec
from experiments.runtime import Trainer
from optimizers.sgd import SGD
from tests.experiments.helpers import get_json, poll, tensorboard_server

K = 3


def _tiny_corpus(path):
    """~12k tokens of two-word 'topics' so that co-occurrence has structure."""
    rng = np.random.default_rng(0)
    topics = [["king", "queen", "crown", "throne", "royal"],
              ["man", "woman", "child", "family", "home"],
              ["war", "army", "battle", "soldier", "fight"],
              ["music", "song", "dance", "band", "guitar"]]
    filler = ["the", "a", "of", "and", "in", "to", "was", "is"]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(400):
            topic = topics[rng.integers(len(topics))]
            words = [topic[i] if rng.random() < 0.6 else filler[i % len(filler)]
                     for i in rng.integers(0, 5, 30)]
            f.write(" ".join(words) + "\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("word2vec")
    corpus_file = str(root / "corpus.txt")
    _tiny_corpus(corpus_file)
    model_dir = str(root / "run")
    results = word2vec.EXPERIMENT.run_local(
        model_dir, quick=True, corpus_file=corpus_file, max_tokens=0, epochs=2,
        sample=0.0, learning_rate=0.05, vector_size=8, negatives=K, batch_size=256,
        steps_per_execution=8, jit_compile=True, parallel_copies=2,
        projector_words=20, gensim_baseline="on")
    return model_dir, results


def test_tiny_run_trains_and_records_claims(tiny_run):
    model_dir, results = tiny_run
    assert results["status"] == "completed"
    records = results["data"]["noise_study"]
    assert sorted(r["alpha"] for r in records) == [0.0, 0.75, 1.0]
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f)["status"] == "completed"
    # Every sub-run's last-epoch mean loss is below the loss at initialisation (C = 0 gives
    # logits 0, i.e. (1 + K) log 2 per pair).
    for seed_dir in _sub_runs(model_dir):
        with open(os.path.join(seed_dir, "sweep_record.json")) as f:
            metrics = json.load(f)["metrics"]
        assert metrics["loss_at_init"] == pytest.approx((1 + K) * math.log(2))
        assert metrics["final_loss"] < 0.9 * metrics["loss_at_init"]
        assert metrics["words_per_second"] > 0
        assert 0 <= metrics["analogy_coverage"] <= 1
    # Per-epoch TensorBoard scalars: loss, words/s, per-pair learning rate, W and W+C scores.
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(os.path.join(seed_dir, "word2vec"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    assert {"word2vec/loss", "word2vec/words_per_second", "word2vec/learning_rate",
            "analogy/W", "ws353_spearman/W+C", "simlex_spearman/W"} <= set(
        events.Tags()["tensors"])
    texts = [c["text"] for c in results["claims"]]
    assert len(texts) == 5
    assert any("alpha = 0.75" in t for t in texts)
    assert any("queen" in t for t in texts)
    assert any("gensim" in t for t in texts)
    claims = {c["text"]: c for c in results["claims"]}
    same_seed = claims["Same seed -> same embeddings (CPU)"]
    assert same_seed["verdict"] == "confirmed" and same_seed["measured"] is True
    assert results["metrics"]["words_per_second_ratio"] > 0
    with open(os.path.join(model_dir, "report.md")) as f:
        report = f.read()
    assert "too small to decide" in report and "Side by side with gensim" in report


def _sub_runs(model_dir):
    noise = os.path.join(model_dir, "noise")
    return [os.path.join(noise, key, seed) for key in os.listdir(noise)
            for seed in os.listdir(os.path.join(noise, key))]


def test_projector_files_and_tensorboard_lists_the_tensor(tiny_run):
    model_dir, _ = tiny_run
    projector = os.path.join(model_dir, "projector")
    for name in ("projector_config.pbtxt", "metadata.tsv", "checkpoint"):
        assert os.path.exists(os.path.join(projector, name)), name
    with open(os.path.join(projector, "metadata.tsv"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 20
    with tensorboard_server(model_dir) as base:
        runs = poll(lambda: get_json(f"{base}/data/plugin/projector/runs"),
                    lambda runs: "projector" in runs) or []
        info = get_json(f"{base}/data/plugin/projector/info?run=projector") \
            if "projector" in runs else {}
    assert "projector" in runs, runs
    tensors = {e["tensorName"]: e for e in info["embeddings"]}
    assert tensors["W/.ATTRIBUTES/VARIABLE_VALUE"]["tensorShape"] == [20, 8]
    assert "W_plus_C/.ATTRIBUTES/VARIABLE_VALUE" in tensors


def _task(shared=False, vocab=50, dim=4, batch=16):
    return word2vec.SkipGramTask(vocab, dim, learning_rate=0.025, min_alpha=1e-4,
                                 total_steps=100, global_batch_size=batch,
                                 shared_negatives=shared, seed=1)


@pytest.mark.parametrize("init, scale", [("gensim", 1.0), ("word2vec_c", 0.5)])
def test_initial_vectors_span_the_peer_range(init, scale):
    # gensim 4: U[-1/d, 1/d) for W (keyedvectors.prep_vectors); word2vec.c: U[-0.5/d, 0.5/d).
    # C starts at zero in both.
    dim = 100
    task = word2vec.SkipGramTask(2000, dim, learning_rate=0.025, min_alpha=1e-4,
                                 total_steps=100, global_batch_size=16, seed=1,
                                 init_scale=word2vec.INIT_SCALES[init])
    w, c = word2vec.word_vectors(task.build_model())
    bound = scale / dim
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(float(w.std()) - bound / np.sqrt(3)) < 0.01 * bound  # uniform's SD
    assert not c.any()
    if init == "gensim":  # the peer's own vectors before training span the same range
        from gensim.models import Word2Vec

        peer = Word2Vec(vector_size=dim, min_count=1, sg=1, seed=1)
        peer.build_vocab([[f"w{i}" for i in range(2000)]])
        assert np.abs(peer.wv.vectors).max() == pytest.approx(np.abs(w).max(), rel=1e-3)
        assert float(peer.wv.vectors.std()) == pytest.approx(float(w.std()), rel=0.02)
        assert not peer.syn1neg.any()


def test_gensim_baseline_decays_its_learning_rate_with_the_words(monkeypatch):
    # Two long sentences, then 20 short ones: gensim's jobs hold <= 10,000 words, so the first
    # job is one long sentence (1 of 22 sentences, 9,000 of 19,000 words). Its progress must be
    # counted in words, as word2vec.c and our schedule count it, not in sentences.
    from gensim.models import Word2Vec

    from experiments.data.corpus import build_corpus

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(50)]
    documents = [list(rng.choice(vocab, n)) for n in [9000, 9000] + [50] * 20]
    corpus = build_corpus(documents, min_count=1)
    progress = []
    real_next_alpha = Word2Vec._get_next_alpha

    def spy(self, epoch_progress, cur_epoch):
        progress.append((cur_epoch, epoch_progress))
        return real_next_alpha(self, epoch_progress, cur_epoch)

    monkeypatch.setattr(Word2Vec, "_get_next_alpha", spy)
    settings = {k: word2vec.flags.FLAGS[k].default for k in (  # the flags the experiment passes
        "negatives", "window", "sample", "noise_exponent", "min_alpha")}
    settings.update(learning_rate=0.025, vector_size=8, min_count=1)
    vectors, words, _ = word2vec.train_gensim(
        corpus, type("Config", (), settings), seed=0, epochs=2)
    assert vectors.shape == (50, 8) and sorted(words) == sorted(vocab)
    # The rate of each epoch's second job (counted in sentences it would be 1/22 = 0.045).
    after_first_job = sorted(p for p in progress if p[1] > 0)
    assert after_first_job == [(0, pytest.approx(9000 / 19000)), (1, pytest.approx(9000 / 19000))]


def _batch(vocab=50, batch=16, shared=False, seed=0):
    rng = np.random.default_rng(seed)
    context = rng.integers(0, vocab, batch)
    negatives = rng.integers(0, vocab, (1 if shared else batch, K)).repeat(
        batch if shared else 1, axis=0)
    if shared:
        negatives[:, 0] = context[0]  # an accidental hit in the first row
    return {"target": tf.constant(rng.integers(0, vocab, batch), tf.int32),
            "context": tf.constant(context, tf.int32),
            "negatives": tf.constant(negatives, tf.int32)}


@pytest.mark.parametrize("shared", [False, True])
def test_sgns_loss_matches_numpy(shared):
    task = _task(shared)
    model = task.build_model()
    layer = model.get_layer("skipgram")
    rng = np.random.default_rng(3)
    w, c = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    layer.target_embedding.assign(w.astype(np.float32))
    layer.context_embedding.assign(c.astype(np.float32))
    batch = _batch(shared=shared)
    loss_sum, weight = task.compute_loss(model, batch, training=True)
    t, ctx, neg = (batch[k].numpy() for k in ("target", "context", "negatives"))
    log_sigmoid = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
    expected = 0.0
    for i in range(len(t)):
        expected -= log_sigmoid(w[t[i]] @ c[ctx[i]])
        for n in neg[i]:
            if not (shared and n == ctx[i]):  # shared sets mask accidental hits
                expected -= log_sigmoid(-w[t[i]] @ c[n])
    assert float(weight) == 16
    assert float(loss_sum) == pytest.approx(expected, rel=1e-5)


class _SpySGD(SGD):
    seen = []

    def update_step(self, gradient, variable, learning_rate):
        _SpySGD.seen.append(type(gradient).__name__)
        super().update_step(gradient, variable, learning_rate)


@pytest.mark.parametrize("shared", [False, True])
def test_gradients_reach_the_optimizer_as_indexed_slices(shared):
    task = _task(shared, vocab=1000)
    task.build_optimizer = lambda: _SpySGD(learning_rate=task.schedule())
    _SpySGD.seen = []
    trainer = Trainer(tf.distribute.get_strategy(), task, 16, jit_compile=True,
                      steps_per_execution=2, verbose=0)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    batches = [_batch(vocab=1000, shared=shared, seed=s) for s in range(2)]
    data = tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([b[k] for b in batches]) for k in batches[0]})
    trainer.fit(lambda epoch: data, 1)
    assert _SpySGD.seen and set(_SpySGD.seen) == {"IndexedSlices"}, _SpySGD.seen
    # Only rows the batches touched moved; all others are bit-identical.
    touched_w = np.unique(np.concatenate([b["target"].numpy() for b in batches]))
    after = [v.numpy() for v in trainer.model.trainable_variables]
    changed_w = np.flatnonzero((after[0] != before[0]).any(axis=1))
    assert set(changed_w) <= set(touched_w) and len(changed_w) > 0
    # The first step's learning rate is B * 0.025: each pair's gradient times 0.025.
    assert float(task.schedule()(0)) == pytest.approx(16 * 0.025)


def test_corpus_prefix_rebuilds_the_vocabulary(tmp_path):
    path = str(tmp_path / "c.txt")
    with open(path, "w") as f:
        f.write("a a a b b c\n" * 3 + "d d d d d d d d\n")
    from experiments.data import corpus as corpus_lib

    corpus = corpus_lib.load_corpus(corpus_files=path, min_count=2)
    cut = word2vec.corpus_prefix(corpus, 12, 2)
    assert cut.vocab.words == ("a", "b", "c")  # d is past the cut; counts 6, 4, 2
    assert list(cut.vocab.counts) == [6, 4, 2]
    words = np.array(cut.vocab.words)
    assert " ".join(words[cut.ids]) == "a a a b b c a a a b b c"
    assert list(cut.offsets) == [0, 6, 12]
