"""Skip-gram with negative sampling (Mikolov et al. 2013, "Distributed Representations of Words
and Phrases and their Compositionality", eq. 4 and section 2.2).

Each word w has a target vector W[w] and a separate context vector C[w]. For a (target t,
context c) pair seen in the corpus and K noise words n_1..n_K drawn from P_n:

    loss = -log sigma(W[t] . C[c]) - sum_k log sigma(-W[t] . C[n_k])
         = softplus(-z_pos) + sum_k softplus(z_neg_k)        (the stable form computed here)

    P_n(w) = U(w)^(3/4) / Z,  U the unigram (count) distribution, Z = sum_w U(w)^(3/4)

The 3/4 power (the paper: "the unigram distribution U(w) raised to the 3/4rd power") samples
rare words more often than their frequency and frequent words less often.
"""

import keras
import numpy as np
from keras import ops

from layers.registration import register


@register
class SkipGram(keras.layers.Layer):
    """Scores (target, context) word pairs with separate target and context embeddings.

    Call on `[targets, contexts]`: `targets` (batch,) or (batch, 1) word ids; `contexts`
    (batch, 1 + K) word ids, the true context first, then K negatives. Returns the logits
    (batch, 1 + K), logits[b, j] = W[targets[b]] . C[contexts[b, j]].

    Args:
        vocab_size: Number of words.
        embedding_dim: Size of each word vector.
        target_initializer: Initialiser of W. word2vec.c uses uniform(-0.5/d, 0.5/d).
        context_initializer: Initialiser of C. word2vec.c starts it at zero, so the first
            updates of W are driven by C's first update.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        vocab_size,
        embedding_dim,
        target_initializer=None,
        context_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        if target_initializer is None:
            bound = 0.5 / embedding_dim
            target_initializer = keras.initializers.RandomUniform(-bound, bound)
        self.target_initializer = keras.initializers.get(target_initializer)
        self.context_initializer = keras.initializers.get(context_initializer)

    def build(self, input_shape):
        self.target_embedding = self.add_weight(
            name="target_embedding",
            shape=(self.vocab_size, self.embedding_dim),
            initializer=self.target_initializer,
        )
        self.context_embedding = self.add_weight(
            name="context_embedding",
            shape=(self.vocab_size, self.embedding_dim),
            initializer=self.context_initializer,
        )

    def call(self, inputs):
        """Returns the pair logits, (batch, 1 + K)."""
        targets, contexts = inputs
        targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
        target_vectors = ops.take(self.target_embedding, targets, axis=0)  # (batch, d)
        context_vectors = ops.take(self.context_embedding, ops.cast(contexts, "int32"), axis=0)
        return ops.einsum("bd,bkd->bk", target_vectors, context_vectors)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])

    def compute_output_spec(self, inputs):
        # Logits come out in the policy's compute dtype (float16 under "mixed_float16").
        return keras.KerasTensor(tuple(inputs[1].shape), dtype=self.compute_dtype)

    @property
    def word_vectors(self):
        """The target embedding W, (vocab_size, embedding_dim): the usual word vectors."""
        return self.target_embedding

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "embedding_dim": self.embedding_dim,
                "target_initializer": keras.initializers.serialize(self.target_initializer),
                "context_initializer": keras.initializers.serialize(self.context_initializer),
            }
        )
        return config


def negative_sampling_loss(logits):
    """Per-example negative-sampling loss for logits laid out as [positive, K negatives].

    Args:
        logits: (batch, 1 + K) pair scores, the true context in column 0.

    Returns:
        (batch,) losses, -log sigma(z_0) - sum_{k>=1} log sigma(-z_k), computed as
        softplus(-z_0) + sum_k softplus(z_k), which neither overflows nor takes log(0).
    """
    logits = ops.convert_to_tensor(logits)
    return ops.softplus(-logits[:, 0]) + ops.sum(ops.softplus(logits[:, 1:]), axis=-1)


@register
class NegativeSamplingLoss(keras.losses.Loss):
    """Negative-sampling loss as a Keras loss, for `model.compile(loss=...)`.

    `y_true` holds the pair labels (1 for true contexts, 0 for noise words), shape like
    `y_pred` (the logits); the loss per example is the *sum* over its 1 + K pairs of the
    sigmoid cross-entropy, which for labels [1, 0, ..., 0] is exactly
    `negative_sampling_loss(y_pred)`.
    """

    def __init__(self, reduction="sum_over_batch_size", name="negative_sampling_loss", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        per_pair = y_true * ops.softplus(-y_pred) + (1.0 - y_true) * ops.softplus(y_pred)
        return ops.sum(per_pair, axis=-1)


class NegativeSampler:
    """Draws noise words from the smoothed unigram distribution P_n(w) = count(w)^alpha / Z.

    A host-side (NumPy) sampler: word2vec builds its (target, context, negatives) examples in
    the input pipeline, so draw them here and feed them in (or wrap `sample` in
    `tf.numpy_function`).

    Args:
        counts: Word counts, one per word id (vocab_size,). Words with count 0 are never drawn.
        alpha: Smoothing power; Mikolov et al. use 3/4.
        seed: Seed of the NumPy generator.
    """

    def __init__(self, counts, alpha=0.75, seed=None):
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("counts must be a 1-D array of non-negative numbers, not all zero.")
        self.alpha = alpha
        weights = counts**alpha
        weights[counts == 0] = 0.0  # 0 ** 0 == 1 would give unseen words mass when alpha == 0
        self.probabilities = weights / weights.sum()
        self._cdf = np.cumsum(self.probabilities)
        self._cdf[-1] = 1.0  # guard the last bucket against rounding
        self._rng = np.random.default_rng(seed)

    def _draw(self, size):
        # Inverse-CDF sampling; side="right" skips zero-probability words.
        ids = np.searchsorted(self._cdf, self._rng.random(size), side="right")
        return np.minimum(ids, len(self._cdf) - 1)

    def sample(self, num_negatives, positives=None, batch_size=None):
        """Draws `num_negatives` noise word ids per example.

        Args:
            num_negatives: K, the number of noise words per example.
            positives: Optional (batch,) true context ids; when given, no negative of an
                example equals its positive (those draws are redrawn, i.e. sampled from P_n
                renormalised without the positive).
            batch_size: Number of examples when `positives` is not given.

        Returns:
            An int64 array (batch, num_negatives).
        """
        if positives is None:
            if batch_size is None:
                raise ValueError("Pass positives or batch_size.")
            return self._draw((batch_size, num_negatives))
        positives = np.asarray(positives).reshape(-1, 1)
        if (self.probabilities[positives] >= 1.0).any():
            raise ValueError("A positive holds all the probability mass; cannot exclude it.")
        negatives = self._draw((positives.shape[0], num_negatives))
        # Redraw the clashes until none is left. Only the clashing positions are revisited
        # (in row-major order, so the draws are those of re-scanning the whole array).
        flat = negatives.reshape(-1)
        clash = np.flatnonzero(flat == np.repeat(positives[:, 0], num_negatives))
        while clash.size:
            flat[clash] = self._draw(clash.size)
            clash = clash[flat[clash] == positives[clash // num_negatives, 0]]
        return negatives
