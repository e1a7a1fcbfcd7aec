"""Skip-gram training examples for one epoch, generated vectorised in NumPy.

For epoch e of a run with seed s, everything random comes from `np.random.default_rng([s, e])`
(subsampling, windows, shuffle) and a `NegativeSampler` seeded with `[s, e, 1]` (noise words),
so the same (seed, epoch) always gives the same batches, on any number of replicas.

1. Frequent-word subsampling (word2vec.c / gensim `prepare_vocab`): with N the number of
   corpus tokens of vocabulary words and t = sample * N (for sample < 1; gensim reads
   sample >= 1 as an absolute count, t = int(sample * (3 + sqrt 5) / 2)), a token of a word
   with count f is kept with probability

       keep(f) = min(1, (sqrt(f / t) + 1) * t / f)

   The dropped tokens are removed from their sentence before windows are drawn (so windows
   reach further), as in word2vec and gensim. sample = 0 keeps everything.
2. Dynamic ("reduced") window: each kept centre position i draws b_i uniformly from
   {1, ..., window} (gensim: window - randint(0, window)) and pairs with every position j != i
   of its sentence with |i - j| <= b_i. Nearer words are thus used more often: a word at
   distance d is used with probability (window - d + 1) / window.
3. Pairs come out centre by centre, contexts left to right (word2vec's order), then (by default)
   shuffled for the epoch, so a batch mixes many parts of the corpus.
4. K noise words per pair from P_n(w) = count(w)^alpha / Z (the suite's `NegativeSampler`,
   inverse-CDF sampling). An accidental hit, a noise word equal to the pair's true context, is
   redrawn (i.e. drawn from P_n renormalised without the true context; TensorFlow's
   `log_uniform_candidate_sampler` in the TF word2vec tutorial neither follows unigram^0.75
   nor excludes the true class). With `shared_negatives`, one set of K noise words serves a
   whole batch (as `tf.nn.nce_loss` does); each row of the batch's `negatives` then repeats it,
   and hits cannot be redrawn per pair, so the model must mask them (`accidental_hits`).

No Python loop runs per pair or per token: per epoch, the loops are over chunks of ~1M
positions (pairs) and over chunks of batches (noise words).
"""

import concurrent.futures
import copy
import math

import numpy as np
import tensorflow as tf

from layers.skipgram import NegativeSampler

def keep_probabilities(counts, sample):
    """Per-word probability that subsampling keeps a token, exactly as gensim computes it.

    Args:
        counts: (vocab_size,) corpus counts of the vocabulary words.
        sample: The `--sample` threshold; 0 (or None) disables subsampling; values >= 1 are
            an absolute count (gensim's shorthand), values in (0, 1) a fraction of all tokens.

    Returns:
        float64 (vocab_size,) keep probabilities in (0, 1].
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not sample:
        return np.ones_like(counts)
    if sample < 0:
        raise ValueError(f"sample must be >= 0, not {sample}")
    if sample < 1.0:
        threshold = sample * counts.sum()
    else:
        threshold = float(int(sample * (3 + math.sqrt(5)) / 2))
    keep = (np.sqrt(counts / threshold) + 1.0) * (threshold / counts)
    return np.minimum(keep, 1.0)


def subsample(ids, offsets, keep, rng):
    """Drops tokens at random, token i kept with probability keep[ids[i]].

    Args:
        ids: int32 (n,) word ids.
        offsets: (num_sentences + 1,) sentence boundaries into `ids`.
        keep: (vocab_size,) keep probabilities.
        rng: A `np.random.Generator`; consumes exactly one `rng.random(n)` draw.

    Returns:
        (kept_ids, kept_offsets): the surviving ids and their sentence boundaries (sentences
        may become empty).
    """
    mask = rng.random(ids.shape[0]) < keep[ids]
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return ids[mask], cumulative[offsets]


def skipgram_pairs(ids, offsets, window, rng, shrink_windows=True, ordered=True):
    """All (centre, context) pairs of one pass, with word2vec's reduced window.

    Args:
        ids: int32 (n,) word ids (already subsampled).
        offsets: (num_sentences + 1,) sentence boundaries; windows never cross them.
        window: The maximum distance between centre and context.
        rng: A `np.random.Generator`; consumes exactly one
            `rng.integers(1, window + 1, n, dtype=np.int32)` draw (none when not shrink_windows).
        shrink_windows: Draw b_i ~ U{1..window} per centre (word2vec); else b_i = window.
        ordered: Return the pairs in word2vec's order (by centre position, then by context
            position). Otherwise they come grouped by distance, which is cheaper and just as
            good when they are shuffled next.

    Returns:
        (centres, contexts), int32 arrays of equal length.
    """
    n = int(ids.shape[0])
    if window < 1:
        raise ValueError(f"window must be >= 1, not {window}")
    if shrink_windows:
        reach = rng.integers(1, window + 1, size=n, dtype=np.int32)
    else:
        reach = np.full(n, window, dtype=np.int32)
    lengths = np.diff(offsets)
    sentence = np.repeat(np.arange(lengths.shape[0], dtype=np.int32), lengths)
    centres, contexts, keys = [], [], []
    for d in range(1, min(window, n - 1) + 1):
        same = sentence[d:] == sentence[:-d]  # k and k + d in one sentence
        right = np.flatnonzero(same & (reach[:-d] >= d))  # centre k, context k + d
        left = np.flatnonzero(same & (reach[d:] >= d)) + d  # centre k, context k - d
        centres += [ids[right], ids[left]]
        contexts += [ids[right + d], ids[left - d]]
        if ordered:  # slot of the context within the centre's window, left to right
            keys += [right * (2 * window) + (window + d - 1), left * (2 * window) + (window - d)]
    if not centres:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    centres, contexts = np.concatenate(centres), np.concatenate(contexts)
    if ordered:
        order = np.argsort(np.concatenate(keys), kind="stable")
        centres, contexts = centres[order], contexts[order]
    return centres.astype(np.int32, copy=False), contexts.astype(np.int32, copy=False)


def shuffle_pairs(centres, contexts, rng):
    """Shuffles two int32 arrays with one permutation (one in-place pass over packed pairs)."""
    packed = (centres.astype(np.int64) << 32) | contexts.astype(np.uint32).astype(np.int64)
    rng.shuffle(packed)
    return (packed >> 32).astype(np.int32), packed.astype(np.int32)


class AliasNegativeSampler(NegativeSampler):
    """The suite's `NegativeSampler` with O(1) draws (Walker's alias method, Vose's build).

    Same distribution (`probabilities` from the parent: count^alpha / Z, zero counts never
    drawn) and the same `sample` API, including the redraw of noise words equal to the
    positive; only `_draw` changes, from a binary search of the CDF (~14 cache-missing steps
    per draw for 16k words) to one 64-bit random number per draw: its top m bits pick one of
    M = 2^m >= vocab_size cells, the other 64 - m bits are compared with the cell's integer
    threshold to choose the cell's word or its alias. Probabilities are exact to ~2^-49.
    """

    def __init__(self, counts, alpha=0.75, seed=None):
        super().__init__(counts, alpha=alpha, seed=seed)
        v = self.probabilities.shape[0]
        bits = max(1, int(np.ceil(np.log2(v))))
        cells = 1 << bits
        scaled = np.zeros(cells)
        scaled[:v] = self.probabilities * cells
        accept = np.ones(cells)
        alias = np.arange(cells, dtype=np.int64)
        small = [i for i in range(cells) if scaled[i] < 1.0]
        large = [i for i in range(cells) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large[-1]
            accept[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            if scaled[g] < 1.0:
                small.append(large.pop())
        # Leftovers (rounding) keep their own word with probability 1; zero-mass cells left
        # over would be a rounding artefact, so send them to the most probable word.
        for i in small + large:
            accept[i] = 1.0
            if i >= v or self.probabilities[i] == 0:
                alias[i], accept[i] = int(np.argmax(self.probabilities)), 0.0
        self._shift = np.uint64(64 - bits)
        self._mask = np.uint64((1 << (64 - bits)) - 1)
        scale = float(1 << (64 - bits))
        self._threshold_int = np.array(
            [min(int(a * scale), 1 << (64 - bits)) for a in accept], dtype=np.uint64)
        self._alias = alias.astype(np.int64)

    def reseeded(self, seed):
        """A copy sharing these tables, with a fresh generator seeded by `seed`."""
        other = copy.copy(self)
        other._rng = np.random.default_rng(seed)
        return other

    def _draw(self, size):
        raw = self._rng.bit_generator.random_raw(int(np.prod(size)))
        cell = (raw >> self._shift).astype(np.int64)
        ids = np.where((raw & self._mask) < self._threshold_int[cell], cell, self._alias[cell])
        return ids.reshape(size)


def accidental_hits(contexts, negatives):
    """Boolean (batch, K) mask of noise words equal to their pair's true context."""
    return np.asarray(negatives) == np.asarray(contexts).reshape(-1, 1)


class SkipGramPipeline:
    """Builds each epoch's (target, context, negatives) batches of a tokenised corpus.

    Args:
        ids: int32 (n,) word ids of the corpus (`Corpus.ids`).
        offsets: Sentence boundaries (`Corpus.offsets`).
        counts: (vocab_size,) word counts (`Corpus.vocab.counts`): subsampling and noise.
        window: Maximum window (`--window`).
        sample: Subsampling threshold (`--sample`).
        num_negatives: K noise words per pair (`--negatives`).
        noise_exponent: alpha of P_n ~ count^alpha (`--noise_exponent`).
        shared_negatives: One set of K noise words per batch instead of per pair.
        seed: The run's seed.
        shuffle: Shuffle the pairs of each epoch.
        shrink_windows: word2vec's reduced window (True) or a fixed one.
    """

    def __init__(self, ids, offsets, counts, *, window=5, sample=1e-3, num_negatives=5,
                 noise_exponent=0.75, shared_negatives=False, seed=0, shuffle=True,
                 shrink_windows=True):
        self.ids = np.asarray(ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.window = int(window)
        self.sample = sample
        self.num_negatives = int(num_negatives)
        self.noise_exponent = float(noise_exponent)
        self.shared_negatives = bool(shared_negatives)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.shrink_windows = shrink_windows
        self.keep = keep_probabilities(self.counts, sample)
        self._sampler_template = AliasNegativeSampler(self.counts, noise_exponent)
        self.noise_probabilities = self._sampler_template.probabilities
        self._epochs = {}  # epoch -> Future of its pairs: the current one and the next
        self._builder = None

    @classmethod
    def from_corpus(cls, corpus, **kwargs):
        return cls(corpus.ids, corpus.offsets, corpus.vocab.counts, **kwargs)

    def expected_effective_words(self):
        """Expected number of tokens kept by subsampling per epoch."""
        return float(np.sum(self.keep[self.ids]))

    def epoch_pairs(self, epoch):
        """(targets, contexts, effective_words) of an epoch, shuffled unless shuffle=False.

        effective_words is the number of tokens subsampling kept (gensim's "effective words").
        The result is kept until a later epoch is asked for (or built by `prefetch_pairs`).
        """
        if epoch not in self._epochs:
            future = concurrent.futures.Future()
            future.set_result(self._build_pairs(epoch))
            self._epochs[epoch] = future
        result = self._epochs[epoch].result()
        for old in [e for e in self._epochs if e < epoch]:
            del self._epochs[old]
        return result

    def prefetch_pairs(self, epoch):
        """Starts building `epoch`'s pairs on a background thread (NumPy, ~0.6 s per
        million tokens), so the next epoch does not wait for them."""
        if epoch not in self._epochs:
            if self._builder is None:
                self._builder = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="skipgram_pairs")
            self._epochs[epoch] = self._builder.submit(self._build_pairs, epoch)

    def _build_pairs(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        kept, kept_offsets = subsample(self.ids, self.offsets, self.keep, rng)
        targets, contexts = skipgram_pairs(kept, kept_offsets, self.window, rng,
                                           self.shrink_windows, ordered=not self.shuffle)
        if self.shuffle:
            targets, contexts = shuffle_pairs(targets, contexts, rng)
        return targets, contexts, int(kept.shape[0])

    def _sampler(self, epoch):
        return self._sampler_template.reseeded([self.seed, epoch, 1])

    def _negatives(self, sampler, contexts, batch_size):
        k = self.num_negatives
        if not self.shared_negatives:
            return sampler.sample(k, positives=contexts).astype(np.int32)
        batches = -(-contexts.shape[0] // batch_size)
        shared = sampler.sample(k, batch_size=batches).astype(np.int32)  # (batches, K)
        return np.repeat(shared, batch_size, axis=0)[: contexts.shape[0]]

    def batches(self, epoch, batch_size, *, drop_remainder=True, chunk_batches=64):
        """Yields the epoch's batches as NumPy dicts, `chunk_batches` of them per yield.

        Each yielded dict holds "target" (c, B), "context" (c, B) and "negatives" (c, B, K)
        int32 arrays for c full batches; with drop_remainder=False the last yield is one partial
        batch, shapes (1, r) and (1, r, K).
        """
        targets, contexts, _ = self.epoch_pairs(epoch)
        sampler = self._sampler(epoch)
        full = targets.shape[0] // batch_size
        chunk = max(1, int(chunk_batches)) * batch_size
        for a in range(0, full * batch_size, chunk):
            b = min(full * batch_size, a + chunk)
            c = (b - a) // batch_size
            yield {
                "target": targets[a:b].reshape(c, batch_size),
                "context": contexts[a:b].reshape(c, batch_size),
                "negatives": self._negatives(sampler, contexts[a:b], batch_size).reshape(
                    c, batch_size, self.num_negatives),
            }
        rest = targets.shape[0] - full * batch_size
        if rest and not drop_remainder:
            a = full * batch_size
            yield {
                "target": targets[a:][None],
                "context": contexts[a:][None],
                "negatives": self._negatives(sampler, contexts[a:], batch_size)[None],
            }

    def num_batches(self, epoch, batch_size, drop_remainder=True):
        n = self.epoch_pairs(epoch)[0].shape[0]
        return n // batch_size if drop_remainder else -(-n // batch_size)

    def dataset(self, epoch, batch_size, *, drop_remainder=True, chunk_batches=64,
                prefetch_next=False):
        """A `tf.data.Dataset` of the epoch's global batches, dicts of int32 tensors.

        Elements: {"target": (B,), "context": (B,), "negatives": (B, K)}. The pairs are built
        when this is called (a fraction of a second per million tokens); the noise words are
        drawn lazily, `chunk_batches` batches at a time, in tf.data's background thread, so
        they overlap with training (add `.prefetch`). The cardinality is known. With
        `prefetch_next`, the next epoch's pairs are built in the background meanwhile.
        """
        k = self.num_negatives
        steps = self.num_batches(epoch, batch_size, drop_remainder)
        if prefetch_next:
            self.prefetch_pairs(epoch + 1)
        batch_dim = batch_size if drop_remainder else None
        signature = {
            "target": tf.TensorSpec((None, batch_dim), tf.int32),
            "context": tf.TensorSpec((None, batch_dim), tf.int32),
            "negatives": tf.TensorSpec((None, batch_dim, k), tf.int32),
        }
        dataset = tf.data.Dataset.from_generator(
            lambda: self.batches(epoch, batch_size, drop_remainder=drop_remainder,
                                 chunk_batches=chunk_batches),
            output_signature=signature,
        ).unbatch()
        return dataset.apply(tf.data.experimental.assert_cardinality(steps))
