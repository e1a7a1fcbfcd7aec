"""Intrinsic word-vector benchmarks: analogies, word-pair similarity, nearest neighbours.

The test files are the ones gensim ships (`gensim.test.utils.datapath`):

- `questions-words.txt` (Mikolov et al. 2013): 19,544 analogy questions "a b c d" (a is to b
  as c is to d) in 14 sections; sections whose name starts with "gram" are syntactic
  (10,675 questions), the other five semantic (8,869).
- `wordsim353.tsv`: WordSim-353 (Finkelstein et al. 2002), 353 pairs with human relatedness.
- `simlex999.txt`: SimLex-999 (Hill et al. 2015), 999 pairs with human *similarity*.

The evaluators follow gensim's `KeyedVectors.evaluate_word_analogies` and
`evaluate_word_pairs` (and agree with them number for number; tested):

- Matching is case-insensitive: file words and vocabulary words are lower-cased, and a
  vocabulary word spelled in several cases maps to its first (most frequent) occurrence.
- Only the first `restrict_vocab` vocabulary words count (gensim's default is 300,000, not
  30,000; vocabularies here are smaller than either, so it restricts nothing unless asked).
  A question (pair) with a word outside them is skipped and counts against coverage.
- Analogy: 3CosAdd. With unit vectors, the answer is the word w among the first
  `restrict_vocab` that maximises cos(w, b) - cos(w, a) + cos(w, c), excluding a, b and c; a
  question is correct if that word is d. Accuracy = correct / answered over all sections,
  coverage = answered / 19,544.
- Similarity: Spearman (and Pearson) correlation between the cosine similarity of each
  covered pair and the human score; coverage = covered pairs / all pairs.

All scoring is vectorised: one matrix product per chunk of questions.
"""

import numpy as np
import scipy.stats

from experiments.runtime.errors import ConfigError

ANALOGY_FILE = "questions-words.txt"
WORDSIM_FILE = "wordsim353.tsv"
SIMLEX_FILE = "simlex999.txt"
ANALOGY_QUESTIONS = 19_544
GENSIM_RESTRICT_VOCAB = 300_000

_CHUNK = 1024  # analogy questions scored per matrix product


def datapath(name):
    """Path of a gensim-shipped test file."""
    from experiments.data.corpus import gensim_data_path  # noqa: PLC0415

    return gensim_data_path(name)


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"could not read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def load_analogies(path=None):
    """Reads an analogy file ("`: section`" lines, then "a b c d" lines).

    Returns:
        A list of (section name, list of (a, b, c, d) lower-cased word tuples).
    """
    path = path or datapath(ANALOGY_FILE)
    sections = []
    for line in _read_lines(path):
        if line.startswith(": "):
            sections.append((line[2:].strip(), []))
            continue
        words = line.lower().split()
        if len(words) != 4:
            continue
        if not sections:
            raise ConfigError(f"{path}: a question comes before the first ': section' line")
        sections[-1][1].append(tuple(words))
    return sections


def load_word_pairs(path):
    """Reads a tab-separated "word1<TAB>word2<TAB>score" file ('#' lines are comments).

    Returns:
        A list of (word1, word2, score) with lower-cased words.
    """
    pairs = []
    for line in _read_lines(path):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            pairs.append((parts[0].lower(), parts[1].lower(), float(parts[2])))
        except (IndexError, ValueError):
            continue
    return pairs


def is_syntactic(section):
    """gensim's convention: "gram*" sections are syntactic, the rest semantic."""
    return section.startswith("gram")


def _lookup(words, restrict_vocab):
    """Lower-cased word -> row among the first `restrict_vocab` words (first spelling wins)."""
    index = {}
    for i, word in enumerate(words[:restrict_vocab]):
        index.setdefault(word.lower(), i)
    return index


def unit_rows(vectors):
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _ratio(a, b):
    return float(a) / b if b else 0.0


def evaluate_analogies(vectors, words, sections=None, *, restrict_vocab=GENSIM_RESTRICT_VOCAB,
                       total_questions=None):
    """3CosAdd analogy accuracy, overall, semantic/syntactic and per section.

    Args:
        vectors: (vocab_size, dim) word vectors, rows in vocabulary order.
        words: The vocabulary, most frequent first.
        sections: `load_analogies()` output; default gensim's questions-words.txt.
        restrict_vocab: Only the first this many words are candidates and may appear in a
            question (gensim's default 300,000).
        total_questions: Denominator of coverage; default the number of questions read.

    Returns:
        A dict: "accuracy", "correct", "answered", "questions", "coverage", "semantic" and
        "syntactic" (each {"accuracy", "correct", "answered", "questions"}), "sections" (a list
        of {"section", "accuracy", "correct", "answered", "questions"}).
    """
    if sections is None:
        sections = load_analogies()
    index = _lookup(list(words), restrict_vocab)
    unit = unit_rows(np.asarray(vectors)[: min(restrict_vocab, len(words))])
    rows, section_of = [], []
    per_section = []
    for s, (name, questions) in enumerate(sections):
        per_section.append({"section": name, "questions": len(questions)})
        for q in questions:
            if all(w in index for w in q):
                rows.append([index[w] for w in q])
                section_of.append(s)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    section_of = np.asarray(section_of, dtype=np.int64)
    correct = np.zeros(rows.shape[0], dtype=bool)
    for a in range(0, rows.shape[0], _CHUNK):
        q = rows[a:a + _CHUNK]
        query = unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]]
        scores = query @ unit.T
        r = np.arange(q.shape[0])[:, None]
        scores[r, q[:, :3]] = -np.inf
        correct[a:a + _CHUNK] = scores.argmax(axis=1) == q[:, 3]
    out_sections = []
    groups = {"semantic": [0, 0, 0], "syntactic": [0, 0, 0]}
    for s, info in enumerate(per_section):
        mine = section_of == s
        answered, right = int(mine.sum()), int(correct[mine].sum())
        info.update(correct=right, answered=answered, accuracy=_ratio(right, answered))
        out_sections.append(info)
        g = groups["syntactic" if is_syntactic(info["section"]) else "semantic"]
        g[0] += right
        g[1] += answered
        g[2] += info["questions"]
    questions = sum(len(q) for _, q in sections)
    total = total_questions or questions
    result = {
        "accuracy": _ratio(correct.sum(), rows.shape[0]),
        "correct": int(correct.sum()),
        "answered": int(rows.shape[0]),
        "questions": questions,
        "coverage": _ratio(rows.shape[0], total),
        "sections": out_sections,
    }
    for name, (right, answered, asked) in groups.items():
        result[name] = {"accuracy": _ratio(right, answered), "correct": right,
                        "answered": answered, "questions": asked}
    return result


def evaluate_word_pairs(vectors, words, pairs, *, restrict_vocab=GENSIM_RESTRICT_VOCAB):
    """Correlation of cosine similarity with human scores over the covered pairs.

    Args:
        vectors: (vocab_size, dim) word vectors.
        words: The vocabulary, most frequent first.
        pairs: A path or `load_word_pairs` output.
        restrict_vocab: Only the first this many words count.

    Returns:
        {"spearman", "pearson", "pairs", "covered", "coverage"}; the correlations are NaN with
        fewer than two covered pairs.
    """
    if isinstance(pairs, str):
        pairs = load_word_pairs(pairs)
    index = _lookup(list(words), restrict_vocab)
    covered = [(index[a], index[b], s) for a, b, s in pairs if a in index and b in index]
    result = {"pairs": len(pairs), "covered": len(covered),
              "coverage": _ratio(len(covered), len(pairs)),
              "spearman": float("nan"), "pearson": float("nan")}
    if len(covered) < 2:
        return result
    unit = unit_rows(vectors)
    left, right, gold = (np.asarray(x) for x in zip(*covered))
    cosine = np.sum(unit[left] * unit[right], axis=1)
    result["spearman"] = float(scipy.stats.spearmanr(gold, cosine)[0])
    result["pearson"] = float(scipy.stats.pearsonr(gold, cosine)[0])
    return result


def nearest_neighbours(vectors, words, probes, k=8):
    """The k words of highest cosine similarity to each probe (the probe itself excluded).

    Returns:
        {probe: [(word, cosine), ...]} for the probes in the vocabulary.
    """
    words = list(words)
    index = _lookup(words, len(words))
    unit = unit_rows(vectors)
    found = [p for p in probes if p.lower() in index]
    if not found:
        return {}
    rows = np.array([index[p.lower()] for p in found])
    scores = unit[rows] @ unit.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {p: [(words[j], float(scores[i, j])) for j in top[i]] for i, p in enumerate(found)}


def analogy_candidates(vectors, words, a, b, c, k=5):
    """The top k answers of "a is to b as c is to ?" by 3CosAdd (b - a + c), excluding a, b, c.

    E.g. `analogy_candidates(W, words, "man", "king", "woman")` for king - man + woman.
    Returns [] if a word is missing.
    """
    words = list(words)
    index = _lookup(words, len(words))
    if not all(w.lower() in index for w in (a, b, c)):
        return []
    unit = unit_rows(vectors)
    ia, ib, ic = (index[w.lower()] for w in (a, b, c))
    query = unit[ib] - unit[ia] + unit[ic]
    scores = unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
    scores[[ia, ib, ic]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [(words[j], float(scores[j])) for j in top]


def evaluate_all(vectors, words, *, restrict_vocab=GENSIM_RESTRICT_VOCAB):
    """The flat metrics of one set of vectors on gensim's three test files.

    Returns:
        {"analogy", "analogy_semantic", "analogy_syntactic", "analogy_coverage",
         "ws353_spearman", "ws353_coverage", "simlex_spearman", "simlex_coverage"} and
        "analogy_detail" (the full `evaluate_analogies` result).
    """
    analogy = evaluate_analogies(vectors, words, restrict_vocab=restrict_vocab,
                                 total_questions=ANALOGY_QUESTIONS)
    ws = evaluate_word_pairs(vectors, words, datapath(WORDSIM_FILE), restrict_vocab=restrict_vocab)
    sl = evaluate_word_pairs(vectors, words, datapath(SIMLEX_FILE), restrict_vocab=restrict_vocab)
    return {
        "analogy": analogy["accuracy"],
        "analogy_semantic": analogy["semantic"]["accuracy"],
        "analogy_syntactic": analogy["syntactic"]["accuracy"],
        "analogy_coverage": analogy["coverage"],
        "ws353_spearman": ws["spearman"],
        "ws353_coverage": ws["coverage"],
        "simlex_spearman": sl["spearman"],
        "simlex_coverage": sl["coverage"],
        "analogy_detail": analogy,
    }
