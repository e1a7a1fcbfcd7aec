"""Attention layers: additive (Bahdanau), dot-product (Luong) and multi-head self-attention.

Every layer returns a context vector built from softmax weights over the value positions and can
also return those weights (`return_attention_scores=True`), so experiments can plot them.

Additive attention (Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to Align
and Translate", eq. 6 / appendix A.1.2), for a decoder state s_t and encoder states h_i:

    e_ti = v^T tanh(W_q s_t + W_k h_i),   a_ti = softmax_i(e_ti),   c_t = sum_i a_ti h_i

With `projections=False` the learned W_q, W_k are dropped and e_ti = sum(v * tanh(s_t + h_i)),
which is exactly `keras.layers.AdditiveAttention` (v is keras' `scale`).

Dot-product attention (Luong et al. 2015, "Effective Approaches to Attention-based NMT", the
"dot" score): e_ti = g * s_t . h_i with g = 1/sqrt(d) and/or a learned scalar (keras'
`use_scale`); with the same settings it is exactly `keras.layers.Attention`.

Self-attention (Vaswani et al. 2017, "Attention Is All You Need", eq. 1), per head j:

    Q = X W_j^Q,  K = X W_j^K,  V = X W_j^V,  A_j = softmax_row(Q K^T / sqrt(d_k)),
    head_j = A_j V,  output = concat_j(head_j) W^O

with an optional causal mask (position t sees only positions <= t; `use_causal_mask=True` at
call time, as in keras) and a padding mask. Its weights have the shapes of
`keras.layers.MultiHeadAttention`'s, so weights copy across directly.

Every layer here supports Keras masks (query and value masks; the output carries the query's
mask) and per-layer or global mixed-precision policies (float32 weights, outputs and
`compute_output_spec` in the compute dtype).
"""

import math

import keras
from keras import ops

from layers.registration import register


def _large_negative(dtype):
    # Masked logits must vanish under exp() yet stay finite in float16 (max 65504).
    return -65500.0 if keras.backend.standardize_dtype(dtype) == "float16" else -1e9


def _masked_softmax(scores, mask):
    """Softmax over the last axis that gives masked positions exactly zero weight.

    A row whose every position is masked (e.g. a padded query) gets all-zero weights rather than
    the uniform distribution a plain additive bias would give.
    """
    if mask is None:
        return ops.softmax(scores, axis=-1)
    scores = ops.where(mask, scores, _large_negative(scores.dtype))
    return ops.where(mask, ops.softmax(scores, axis=-1), 0.0)


def _causal_mask(num_queries, num_keys):
    """A (num_queries, num_keys) boolean mask that is True where key index <= query index."""
    rows = ops.expand_dims(ops.arange(num_queries), -1)
    cols = ops.expand_dims(ops.arange(num_keys), 0)
    return ops.greater_equal(rows, cols)


def _and_masks(*masks):
    """The logical AND of the boolean masks that are not None (None if all are None)."""
    result = None
    for mask in masks:
        if mask is None:
            continue
        mask = ops.cast(mask, "bool")
        result = mask if result is None else ops.logical_and(result, mask)
    return result


class _AttentionBase(keras.layers.Layer):
    """What every attention layer here shares: dropout on the weights, masking, config.

    `_attend(scores, mask, training)` turns (..., Tq, Tv) scores into the weights (masked
    softmax) and the dropped-out weights used to mix the values.
    """

    def __init__(self, dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.dropout = dropout
        self.seed = seed
        self.supports_masking = True
        if dropout > 0.0:
            self.seed_generator = keras.random.SeedGenerator(seed)

    def _attend(self, scores, mask, training):
        weights = _masked_softmax(scores, mask)
        if training and self.dropout > 0.0:
            return weights, keras.random.dropout(weights, self.dropout, seed=self.seed_generator)
        return weights, weights

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout, "seed": self.seed})
        return config


class _QueryValueAttention(_AttentionBase):
    """Shared plumbing of the query/value attention layers (inputs, masks, shapes).

    Subclasses implement `_scores(query, key) -> (batch, Tq, Tv)`.
    """

    @staticmethod
    def _unpack(inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(
                "Attention layers take a list [query, value] or [query, value, key]; "
                f"got {type(inputs).__name__}."
            )
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) == 3 else value
        return query, value, key

    @staticmethod
    def _unpack_shapes(input_shape):
        query_shape, value_shape = input_shape[0], input_shape[1]
        key_shape = input_shape[2] if len(input_shape) == 3 else value_shape
        return query_shape, value_shape, key_shape

    def _scores(self, query, key):
        raise NotImplementedError

    def call(
        self,
        inputs,
        mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Attends from each query to the value positions.

        Args:
            inputs: `[query, value]` or `[query, value, key]`. `query` is (batch, Tq, dq) or a
                single decoder state (batch, dq); `value` is (batch, Tv, dv); `key` (batch, Tv,
                dk) defaults to `value`.
            mask: Optional `[query_mask, value_mask]` booleans of shape (batch, Tq) / (batch,)
                and (batch, Tv). Masked values get zero weight; masked queries a zero output.
                Filled in automatically from Keras masks (e.g. `Embedding(mask_zero=True)`).
            training: Whether to apply dropout to the attention weights.
            return_attention_scores: Also return the weights (after masking and softmax).
            use_causal_mask: Let query t attend only to value positions <= t.

        Returns:
            The context, (batch, Tq, dv) or (batch, dv) for a 2-D query, and with
            `return_attention_scores` also the weights, (batch, Tq, Tv) or (batch, Tv).
        """
        query, value, key = self._unpack(inputs)
        query_mask, value_mask = (mask[0], mask[1]) if mask is not None else (None, None)
        single_step = len(query.shape) == 2
        if single_step:
            query = ops.expand_dims(query, 1)
            if query_mask is not None:
                query_mask = ops.expand_dims(query_mask, 1)

        scores = self._scores(query, key)  # (batch, Tq, Tv)
        causal = None
        if use_causal_mask:
            causal = ops.expand_dims(_causal_mask(ops.shape(scores)[-2], ops.shape(scores)[-1]), 0)
        value_mask = None if value_mask is None else ops.expand_dims(value_mask, -2)
        weights, attended = self._attend(scores, _and_masks(value_mask, causal), training)
        context = ops.matmul(attended, value)
        if query_mask is not None:
            context = ops.where(ops.expand_dims(ops.cast(query_mask, "bool"), -1), context, 0.0)

        if single_step:
            context = ops.squeeze(context, 1)
            weights = ops.squeeze(weights, 1)
        if return_attention_scores:
            return context, weights
        return context

    def compute_mask(self, inputs, mask=None):
        if mask is None or mask[0] is None:
            return None
        return mask[0]

    def compute_output_shape(self, input_shape):
        query_shape, value_shape, _ = self._unpack_shapes(input_shape)
        return (*query_shape[:-1], value_shape[-1])

    def compute_output_spec(self, inputs, return_attention_scores=False, **kwargs):
        # The layer computes in its policy's compute dtype (e.g. float16 under
        # "mixed_float16"), whatever dtype the symbolic inputs carry.
        query, value, key = self._unpack(inputs)
        output_shape = self.compute_output_shape((query.shape, value.shape))
        output = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        weights_shape = (*query.shape[:-1], key.shape[-2])
        return output, keras.KerasTensor(weights_shape, dtype=self.compute_dtype)


@register
class DotProductAttention(_QueryValueAttention):
    """Luong dot-product attention: score_ti = g * s_t . h_i, weights = softmax over i.

    With the same `use_scale` (and, for `scale_by_sqrt_dim=True`, keras' scale set to
    1/sqrt(d)), this computes exactly what `keras.layers.Attention` computes.

    Args:
        use_scale: Multiply the scores by a learned scalar (initialised to 1), as keras does.
        scale_by_sqrt_dim: Multiply the scores by the fixed 1/sqrt(d) of "Attention Is All You
            Need", which keeps their variance near 1 when q and k have unit-variance entries.
        dropout: Fraction of the attention weights dropped during training.
        seed: Seed for the dropout.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, use_scale=False, scale_by_sqrt_dim=False, dropout=0.0, seed=None, **kwargs):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        self.use_scale = use_scale
        self.scale_by_sqrt_dim = scale_by_sqrt_dim

    def build(self, input_shape):
        query_shape, _, key_shape = self._unpack_shapes(input_shape)
        if query_shape[-1] != key_shape[-1]:
            raise ValueError(
                f"Dot-product attention needs equal query and key sizes, got {query_shape[-1]} "
                f"and {key_shape[-1]}."
            )
        self.scale = None
        if self.use_scale:
            self.scale = self.add_weight(name="scale", shape=(), initializer="ones")

    def _scores(self, query, key):
        scores = ops.matmul(query, ops.swapaxes(key, -2, -1))
        if self.scale_by_sqrt_dim:
            scores = scores * (1.0 / math.sqrt(query.shape[-1]))
        if self.scale is not None:
            scores = scores * self.scale
        return scores

    def get_config(self):
        config = super().get_config()
        config.update({"use_scale": self.use_scale, "scale_by_sqrt_dim": self.scale_by_sqrt_dim})
        return config


@register
class AdditiveAttention(_QueryValueAttention):
    """Bahdanau additive attention: score_ti = v^T tanh(W_q s_t + W_k h_i).

    Two modes:

    * `projections=True` (Bahdanau): learned `query_kernel` W_q (dq, units) and `key_kernel`
      W_k (dk, units) map query and keys into a shared `units`-dim space, so the decoder state
      and encoder states may have different sizes.
    * `projections=False` (keras): no W_q, W_k; score_ti = sum(v * tanh(s_t + h_i)) with
      dq == dk. This is exactly `keras.layers.AdditiveAttention` (v is its `scale` weight).

    Args:
        units: Size of the projected space (`projections=True` only); defaults to dq.
        projections: Whether to learn W_q and W_k (see above).
        use_scale: Learn the vector v (keras' `scale`, glorot-uniform initialised). If False,
            v is all ones: score_ti = sum(tanh(...)).
        dropout: Fraction of the attention weights dropped during training.
        seed: Seed for the dropout.
        kernel_initializer: Initialiser of W_q and W_k.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        units=None,
        projections=True,
        use_scale=True,
        dropout=0.0,
        seed=None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        if units is not None and not projections:
            raise ValueError("`units` needs projections=True; without them the size is dq.")
        self.units = units
        self.projections = projections
        self.use_scale = use_scale
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        query_shape, _, key_shape = self._unpack_shapes(input_shape)
        query_dim, key_dim = query_shape[-1], key_shape[-1]
        self.query_kernel = self.key_kernel = None
        if self.projections:
            dim = self.units or query_dim
            self.query_kernel = self.add_weight(
                name="query_kernel", shape=(query_dim, dim), initializer=self.kernel_initializer
            )
            self.key_kernel = self.add_weight(
                name="key_kernel", shape=(key_dim, dim), initializer=self.kernel_initializer
            )
        else:
            if query_dim != key_dim:
                raise ValueError(
                    "projections=False needs equal query and key sizes, got "
                    f"{query_dim} and {key_dim}; use projections=True."
                )
            dim = query_dim
        self.scale = None
        if self.use_scale:
            self.scale = self.add_weight(name="scale", shape=(dim,), initializer="glorot_uniform")

    def _scores(self, query, key):
        if self.projections:
            # Project before broadcasting: (Tq + Tv) * units matmul work, not Tq * Tv * units.
            query = ops.matmul(query, self.query_kernel)
            key = ops.matmul(key, self.key_kernel)
        hidden = ops.tanh(ops.expand_dims(query, -2) + ops.expand_dims(key, -3))
        if self.scale is not None:
            hidden = hidden * self.scale
        return ops.sum(hidden, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "projections": self.projections,
                "use_scale": self.use_scale,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@register
class SelfAttention(_AttentionBase):
    """Multi-head scaled dot-product self-attention over a sequence X of shape (batch, T, d).

    Weights mirror `keras.layers.MultiHeadAttention`: `query_kernel` (d, heads, key_dim),
    `query_bias` (heads, key_dim), likewise for key and value, `output_kernel`
    (heads, value_dim, output_dim) and `output_bias` (output_dim,), created in that order, so
    `mha.set_weights(layer.get_weights())` copies them (same `use_bias`), and
    `layer(x, mask=m, use_causal_mask=c)` equals
    `mha(x, x, query_mask=m, value_mask=m, use_causal_mask=c)`.

    Masking: a padding mask (batch, T) (a Keras mask, e.g. from `Embedding(mask_zero=True)`,
    or `mask=`) removes padded keys from every row and gives padded query rows all-zero weights
    (as keras' masked Softmax does); `use_causal_mask=True` at call time adds the
    lower-triangular mask of a decoder. The output carries the input's Keras mask.

    Args:
        key_dim: Size d_k of each head's queries and keys.
        num_heads: Number of attention heads.
        value_dim: Size of each head's values; defaults to `key_dim`.
        output_dim: Size of the output projection; defaults to the input size d.
        causal: Deprecated alias kept for saved models and old code: always apply the causal
            mask, as if every call passed `use_causal_mask=True`.
        dropout: Fraction of the attention weights dropped during training.
        use_bias: Whether the four projections have biases.
        kernel_initializer: Initialiser of the projection kernels.
        bias_initializer: Initialiser of the biases.
        seed: Seed for the dropout.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        key_dim,
        num_heads=1,
        value_dim=None,
        output_dim=None,
        causal=False,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        **kwargs,
    ):
        super().__init__(dropout=dropout, seed=seed, **kwargs)
        self.key_dim = key_dim
        self.num_heads = num_heads
        self.value_dim = value_dim
        self.output_dim = output_dim
        self.causal = causal
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        model_dim = input_shape[-1]
        value_dim = self.value_dim or self.key_dim
        output_dim = self.output_dim or model_dim
        heads = self.num_heads

        def projection(name, kernel_shape, bias_shape):
            kernel = self.add_weight(
                name=f"{name}_kernel", shape=kernel_shape, initializer=self.kernel_initializer
            )
            bias = None
            if self.use_bias:
                bias = self.add_weight(
                    name=f"{name}_bias", shape=bias_shape, initializer=self.bias_initializer
                )
            return kernel, bias

        self.query_kernel, self.query_bias = projection(
            "query", (model_dim, heads, self.key_dim), (heads, self.key_dim)
        )
        self.key_kernel, self.key_bias = projection(
            "key", (model_dim, heads, self.key_dim), (heads, self.key_dim)
        )
        self.value_kernel, self.value_bias = projection(
            "value", (model_dim, heads, value_dim), (heads, value_dim)
        )
        self.output_kernel, self.output_bias = projection(
            "output", (heads, value_dim, output_dim), (output_dim,)
        )

    @staticmethod
    def _project(x, kernel, bias):
        y = ops.einsum("btd,dhk->bthk", x, kernel)
        return y if bias is None else y + bias

    def call(
        self,
        inputs,
        mask=None,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Applies self-attention.

        Args:
            inputs: The sequence X, (batch, T, d).
            mask: Optional padding mask (batch, T), True for real tokens; filled in
                automatically from a Keras mask.
            attention_mask: Optional extra boolean mask (batch, T, T), True where query t may
                attend to key s; combined with the padding and causal masks.
            training: Whether to apply dropout to the attention weights.
            return_attention_scores: Also return the weights.
            use_causal_mask: Let position t attend only to positions <= t (as
                `keras.layers.MultiHeadAttention`'s argument of the same name).

        Returns:
            The output, (batch, T, output_dim), and with `return_attention_scores` also the
            weights, (batch, num_heads, T, T), each unmasked row summing to 1.
        """
        query = self._project(inputs, self.query_kernel, self.query_bias)
        key = self._project(inputs, self.key_kernel, self.key_bias)
        value = self._project(inputs, self.value_kernel, self.value_bias)
        # Scale the queries, not the (T, T) scores: fewer multiplies, same result.
        query = query * ops.cast(1.0 / math.sqrt(self.key_dim), query.dtype)
        scores = ops.einsum("bthk,bshk->bhts", query, key)

        padding = None
        if mask is not None:
            mask = ops.cast(mask, "bool")
            padding = ops.logical_and(ops.expand_dims(mask, -1), ops.expand_dims(mask, -2))
        causal = None
        if use_causal_mask or self.causal:
            length = ops.shape(inputs)[1]
            causal = ops.expand_dims(_causal_mask(length, length), 0)
        full_mask = _and_masks(padding, attention_mask, causal)  # broadcastable to (b, T, T)
        if full_mask is not None:
            full_mask = ops.expand_dims(full_mask, 1)  # broadcast over heads

        weights, attended = self._attend(scores, full_mask, training)
        context = ops.einsum("bhts,bshv->bthv", attended, value)
        outputs = ops.einsum("bthv,hvo->bto", context, self.output_kernel)
        if self.output_bias is not None:
            outputs = outputs + self.output_bias
        if return_attention_scores:
            return outputs, weights
        return outputs

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim or input_shape[-1])

    def compute_output_spec(self, inputs, return_attention_scores=False, **kwargs):
        output = keras.KerasTensor(self.compute_output_shape(inputs.shape), self.compute_dtype)
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        weights = keras.KerasTensor((batch, self.num_heads, length, length), self.compute_dtype)
        return output, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "key_dim": self.key_dim,
                "num_heads": self.num_heads,
                "value_dim": self.value_dim,
                "output_dim": self.output_dim,
                "causal": self.causal,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
