"""Tests for layers.attention against NumPy formulas and the keras built-ins."""

import keras
import numpy as np
import pytest

from layers.attention import AdditiveAttention, DotProductAttention, SelfAttention
from tests.layer_testing import run_layer_test

RNG = np.random.default_rng(0)
B, TQ, TV, D = 2, 3, 5, 4


def _data(*shape):
    return RNG.normal(size=shape).astype("float32")


def _np_softmax(x, mask=None):
    if mask is not None:
        x = np.where(mask, x, -1e9)
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return p if mask is None else np.where(mask, p, 0.0)


def _np(x):
    return keras.ops.convert_to_numpy(x)


# The value mask leaves at least one valid position in every row (keras adds a bias there,
# we zero fully-masked rows; both agree whenever a row has a valid position).
VALUE_MASK = np.array([[True, True, True, False, False], [True, True, True, True, True]])
QUERY_MASK = np.array([[True, True, False], [True, False, True]])


@pytest.mark.parametrize("layer_cls,kwargs", [
    (DotProductAttention, {"use_scale": True}),
    (AdditiveAttention, {"units": 6}),
    (AdditiveAttention, {"projections": False}),
])
def test_layer_contract(layer_cls, kwargs):
    # Two outputs (context and weights), query and value masks, causal mask at call time.
    run_layer_test(
        layer_cls, kwargs, [_data(B, TQ, D), _data(B, TV, D)], [(B, TQ, D), (B, TQ, TV)],
        call_kwargs={"return_attention_scores": True, "use_causal_mask": True},
        input_mask=[QUERY_MASK, VALUE_MASK], expected_output_mask=QUERY_MASK,
    )


def test_self_attention_contract():
    run_layer_test(
        SelfAttention, {"key_dim": 3, "num_heads": 2}, _data(B, TV, D),
        [(B, TV, D), (B, 2, TV, TV)],
        call_kwargs={"return_attention_scores": True, "use_causal_mask": True},
        input_mask=VALUE_MASK, expected_output_mask=VALUE_MASK,
    )


@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_dot_product_equals_keras_attention(use_scale, masked, causal):
    q, v, k = _data(B, TQ, D), _data(B, TV, D), _data(B, TV, D)
    ours = DotProductAttention(use_scale=use_scale)
    peer = keras.layers.Attention(use_scale=use_scale)
    mask = [QUERY_MASK, VALUE_MASK] if masked else None
    ours([q, v, k])
    peer([q, v, k])
    if use_scale:
        peer.set_weights([np.array(1.7, "float32")])
        ours.set_weights([np.array(1.7, "float32")])
    kw = dict(mask=mask, return_attention_scores=True, use_causal_mask=causal)
    out, w = ours([q, v, k], **kw)
    out_k, w_k = peer([q, v, k], **kw)
    np.testing.assert_allclose(_np(out), _np(out_k), atol=1e-5)
    np.testing.assert_allclose(_np(w), _np(w_k), atol=1e-5)


def test_dot_product_sqrt_scale_matches_numpy_and_keras():
    q, v = _data(B, TQ, D), _data(B, TV, D)
    out, w = DotProductAttention(scale_by_sqrt_dim=True)([q, v], return_attention_scores=True)
    expected_w = _np_softmax(q @ v.transpose(0, 2, 1) / np.sqrt(D))
    np.testing.assert_allclose(_np(w), expected_w, atol=1e-6)
    np.testing.assert_allclose(_np(out), expected_w @ v, atol=1e-5)
    peer = keras.layers.Attention(use_scale=True)
    peer([q, v])
    peer.set_weights([np.array(1 / np.sqrt(D), "float32")])
    np.testing.assert_allclose(_np(out), _np(peer([q, v])), atol=1e-5)


@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_additive_without_projections_equals_keras(use_scale, masked):
    q, v = _data(B, TQ, D), _data(B, TV, D)
    mask = [QUERY_MASK, VALUE_MASK] if masked else None
    ours = AdditiveAttention(projections=False, use_scale=use_scale)
    peer = keras.layers.AdditiveAttention(use_scale=use_scale)
    ours([q, v])
    peer([q, v])
    peer.set_weights(ours.get_weights())
    out, w = ours([q, v], mask=mask, return_attention_scores=True)
    out_k, w_k = peer([q, v], mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(_np(out), _np(out_k), atol=1e-5)
    np.testing.assert_allclose(_np(w), _np(w_k), atol=1e-5)


def test_bahdanau_projection_formula_with_2d_query_and_mask():
    # Decoder state s_t (batch, dq=3) attending encoder states h_i (batch, Tv, dv=4).
    s, h = _data(B, 3), _data(B, TV, D)
    layer = AdditiveAttention(units=6)
    context, weights = layer([s, h], mask=[None, VALUE_MASK], return_attention_scores=True)
    assert context.shape == (B, D) and weights.shape == (B, TV)
    w_q, w_k, v = (_np(x) for x in (layer.query_kernel, layer.key_kernel, layer.scale))
    scores = np.tanh((s @ w_q)[:, None, :] + h @ w_k) @ v  # (B, Tv)
    expected = _np_softmax(scores, VALUE_MASK)
    np.testing.assert_allclose(_np(weights), expected, atol=1e-6)
    np.testing.assert_allclose(_np(context), np.einsum("bt,btd->bd", expected, h), atol=1e-5)
    assert np.all(_np(weights)[0, 3:] == 0.0)


def test_keras_mask_propagates_into_attention():
    tokens = np.array([[3, 1, 2, 0, 0], [1, 1, 4, 2, 5]])
    emb = keras.layers.Embedding(6, D, mask_zero=True)
    layer = DotProductAttention()
    query = _data(B, TQ, D)
    _, weights = layer([query, emb(tokens)], return_attention_scores=True)
    assert np.all(_np(weights)[0, :, 3:] == 0.0)
    np.testing.assert_allclose(_np(weights).sum(-1), 1.0, atol=1e-6)


def _mha_twin(layer, num_heads, key_dim, x):
    mha = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim)
    mha(x, x)
    mha.set_weights(layer.get_weights())
    return mha


@pytest.mark.parametrize("num_heads,key_dim", [(1, 4), (2, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_multi_head_attention(num_heads, key_dim, causal):
    x = _data(B, TV, D)
    layer = SelfAttention(key_dim=key_dim, num_heads=num_heads)
    out, w = layer(x, return_attention_scores=True, use_causal_mask=causal)
    mha = _mha_twin(layer, num_heads, key_dim, x)
    out_k, w_k = mha(x, x, use_causal_mask=causal, return_attention_scores=True)
    np.testing.assert_allclose(_np(w), _np(w_k), atol=1e-5)
    np.testing.assert_allclose(_np(out), _np(out_k), atol=1e-5)
    # The fused (no-scores) path of MHA agrees too.
    np.testing.assert_allclose(_np(out), _np(mha(x, x, use_causal_mask=causal)), atol=1e-5)
    np.testing.assert_allclose(_np(w).sum(-1), 1.0, atol=1e-6)
    if causal:
        assert np.all(np.triu(_np(w)[0, 0], k=1) == 0.0)


def test_self_attention_padding_mask_matches_mha_and_formula():
    x = _data(B, TV, D)
    layer = SelfAttention(key_dim=4, num_heads=2)
    out, w = layer(x, mask=VALUE_MASK, return_attention_scores=True)
    w = _np(w)
    mha = _mha_twin(layer, 2, 4, x)
    pair_mask = VALUE_MASK[:, :, None] & VALUE_MASK[:, None, :]
    out_k, w_k = mha(x, x, attention_mask=pair_mask, return_attention_scores=True)
    np.testing.assert_allclose(w, _np(w_k), atol=1e-5)
    np.testing.assert_allclose(_np(out), _np(out_k), atol=1e-5)
    # Real-token rows sum to 1 and ignore padded keys; padded query rows are all zero.
    np.testing.assert_allclose(w[0, :, :3].sum(-1), 1.0, atol=1e-6)
    assert np.all(w[0, :, :, 3:] == 0.0) and np.all(w[0, :, 3:, :] == 0.0)
    np.testing.assert_allclose(w[1].sum(-1), 1.0, atol=1e-6)
    # Head 0 by hand: softmax(Q K^T / sqrt(d_k)) over real tokens.
    wq, bq, wk, bk = (_np(t) for t in layer.get_weights()[:4])
    q = x[0, :3] @ wq[:, 0] + bq[0]
    k = x[0, :3] @ wk[:, 0] + bk[0]
    np.testing.assert_allclose(w[0, 0, :3, :3], _np_softmax(q @ k.T / 2.0), atol=1e-5)


def test_dropout_only_in_training():
    x = np.abs(_data(B, TV, D)) + 1.0
    layer = SelfAttention(key_dim=4, dropout=0.5, seed=1)
    np.testing.assert_allclose(_np(layer(x)), _np(layer(x, training=False)), atol=0)
    assert not np.allclose(_np(layer(x, training=True)), _np(layer(x)))


def test_self_attention_deprecated_causal_argument_still_masks():
    x = _data(B, TV, D)
    old = SelfAttention(key_dim=4, causal=True)
    new = SelfAttention.from_config({**old.get_config(), "causal": False})
    out_old = old(x)
    new(x)
    new.set_weights(old.get_weights())
    assert not np.allclose(_np(out_old), _np(new(x)), atol=1e-3)
    np.testing.assert_allclose(_np(out_old), _np(new(x, use_causal_mask=True)), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_keras_masks_equal_multi_head_attention(causal):
    # In a functional model, Embedding(mask_zero=True) feeds both layers the same Keras mask,
    # and both hand it on. At real tokens the outputs agree; at padded ones ours gives the
    # query zero weights (as MHA's explicit `attention_mask` path and keras' masked Softmax
    # do), values that are masked out downstream either way.
    tokens = np.array([[3, 1, 2, 0, 0], [1, 1, 4, 2, 5]])
    real = tokens != 0
    emb = keras.layers.Embedding(6, D, mask_zero=True)
    x = emb(tokens)
    ours = SelfAttention(key_dim=3, num_heads=2)
    ours(x)
    mha = _mha_twin(ours, 2, 3, x)
    outputs = []
    for call in (lambda e: ours(e, use_causal_mask=causal),
                 lambda e: mha(e, e, use_causal_mask=causal)):
        # Separate models: MHA clears the Keras mask of the tensor it is given.
        token_input = keras.Input((TV,), dtype="int32")
        out_sym = call(emb(token_input))
        assert out_sym._keras_mask is not None
        outputs.append(keras.Model(token_input, out_sym)(tokens))
    out, out_k = outputs
    np.testing.assert_allclose(_np(out)[real], _np(out_k)[real], atol=1e-5)
    pair = real[:, :, None] & real[:, None, :]
    if causal:
        pair = pair & np.tril(np.ones((TV, TV), bool))
    explicit = mha(_np(x), _np(x), attention_mask=pair, return_attention_scores=True)[0]
    np.testing.assert_allclose(_np(out), _np(explicit), atol=1e-5)
    np.testing.assert_allclose(_np(ours(_np(x), mask=real, use_causal_mask=causal)),
                               _np(explicit), atol=1e-5)


@pytest.mark.parametrize("ours_cls,peer_cls,kwargs", [
    (DotProductAttention, keras.layers.Attention, {"use_scale": True}),
    (AdditiveAttention, keras.layers.AdditiveAttention, {"use_scale": True}),
])
def test_query_value_keras_masks_equal_keras(ours_cls, peer_cls, kwargs):
    # In a functional model with Masking in front, both layers get [query_mask, value_mask]
    # from Keras, mask causally at call time, and hand on the query mask.
    q, v = _data(B, TQ, D), _data(B, TV, D)
    q[~QUERY_MASK], v[~VALUE_MASK] = 0.0, 0.0
    extra = {} if ours_cls is DotProductAttention else {"projections": False}
    outputs = []
    for cls, kw in ((ours_cls, {**kwargs, **extra}), (peer_cls, kwargs)):
        qi, vi = keras.Input((TQ, D)), keras.Input((TV, D))
        layer = cls(**kw)
        out = layer([keras.layers.Masking()(qi), keras.layers.Masking()(vi)],
                    use_causal_mask=True, return_attention_scores=True)
        layer.set_weights([np.full(w.shape, 0.7, "float32") for w in layer.get_weights()])
        mask = out[0]._keras_mask
        assert mask is not None and tuple(mask.shape) == (None, TQ)
        outputs.append(keras.Model([qi, vi], out)([q, v]))
    for got, want in zip(*outputs):
        np.testing.assert_allclose(_np(got), _np(want), atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_matches_keras_built_ins(policy):
    q, v = _data(B, TQ, D), _data(B, TV, D)
    tol = 2e-2 if policy == "mixed_float16" else 1e-1
    pairs = [
        (DotProductAttention(use_scale=True, dtype=policy),
         keras.layers.Attention(use_scale=True, dtype=policy), [q, v]),
        (AdditiveAttention(projections=False, dtype=policy),
         keras.layers.AdditiveAttention(dtype=policy), [q, v]),
    ]
    for ours, peer, inputs in pairs:
        ours(inputs)
        peer(inputs)
        peer.set_weights(ours.get_weights())
        kw = dict(mask=[QUERY_MASK, VALUE_MASK], use_causal_mask=True)
        out, out_k = ours(inputs, **kw), peer(inputs, **kw)
        assert out.dtype == out_k.dtype
        np.testing.assert_allclose(_np(out).astype("float32"), _np(out_k).astype("float32"),
                                   atol=tol)
    x = _data(B, TV, D)
    ours = SelfAttention(key_dim=3, num_heads=2, dtype=policy)
    ours(x)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, dtype=policy)
    mha(x, x)
    mha.set_weights(ours.get_weights())
    out = ours(x, mask=VALUE_MASK, use_causal_mask=True)
    pair = VALUE_MASK[:, :, None] & VALUE_MASK[:, None, :] & np.tril(np.ones((TV, TV), bool))
    out_k = mha(x, x, attention_mask=pair, return_attention_scores=True)[0]
    assert out.dtype == out_k.dtype
    np.testing.assert_allclose(_np(out).astype("float32"), _np(out_k).astype("float32"),
                               atol=tol)
