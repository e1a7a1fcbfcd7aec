"""Tests for layers.blocks: ResNet residual block and MobileNetV2 inverted residual."""

import keras
import numpy as np
import pytest

from layers.blocks import InvertedResidual, ResidualBlock
from tests.layer_testing import run_layer_test

RNG = np.random.default_rng(0)


def _images(batch, size, channels):
    return RNG.normal(size=(batch, size, size, channels)).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_residual_block_contract_with_stride_2_projection():
    layer = run_layer_test(
        ResidualBlock, {"filters": 6, "strides": 2}, _images(2, 8, 3), (2, 4, 4, 6),
        call_kwargs={"training": False},
    )
    assert layer.has_projection
    # conv1, bn1 (2), conv2, bn2 (2), 1x1 shortcut conv, shortcut bn (2).
    assert len(layer.trainable_weights) == 9
    assert tuple(layer.shortcut_conv.kernel.shape) == (1, 1, 3, 6)


@pytest.mark.parametrize("training", [False, True])
def test_residual_block_with_zero_last_gamma_is_activation_of_identity(training):
    x = _images(2, 6, 4)
    block = ResidualBlock(4, zero_init_last_bn=True)
    np.testing.assert_allclose(_np(block(x, training=training)), np.maximum(x, 0.0), atol=1e-6)
    assert not block.has_projection
    linear = ResidualBlock(4, zero_init_last_bn=True, post_activation=False)
    np.testing.assert_allclose(_np(linear(x, training=training)), x, atol=1e-6)


def test_residual_block_equals_its_formula():
    x = _images(2, 6, 3)
    block = ResidualBlock(5, strides=1, post_activation=True)
    out = _np(block(x, training=False))
    f = block.bn2(block.conv2(keras.ops.relu(block.bn1(block.conv1(x)))))
    shortcut = block.shortcut_bn(block.shortcut_conv(x))  # channels change: projection
    np.testing.assert_allclose(out, np.maximum(_np(f) + _np(shortcut), 0.0), atol=1e-5)


def test_inverted_residual_contract():
    run_layer_test(
        InvertedResidual, {"filters": 4, "expansion": 2}, _images(2, 6, 4), (2, 6, 6, 4),
        call_kwargs={"training": False},
    )


@pytest.fixture(scope="module")
def mobilenet_v2():
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), weights=None, include_top=False, alpha=1.0
    )


@pytest.mark.parametrize(
    "block_id,in_channels,filters,expansion,stride,has_residual",
    [
        (0, 32, 16, 1, 1, False),  # t = 1: no expand conv
        (2, 24, 24, 6, 1, True),   # identity residual
        (3, 24, 32, 6, 2, False),  # stride 2: no residual
    ],
)
def test_inverted_residual_matches_keras_mobilenet_v2_block(
    mobilenet_v2, block_id, in_channels, filters, expansion, stride, has_residual
):
    prefix = "expanded_conv_" if block_id == 0 else f"block_{block_id}_"
    peer_params = sum(
        layer.count_params() for layer in mobilenet_v2.layers if layer.name.startswith(prefix)
    )
    block = InvertedResidual(filters, expansion=expansion, stride=stride)
    x = _images(1, 8, in_channels)
    out = block(x, training=False)
    assert block.count_params() == peer_params
    assert block.has_residual == has_residual
    assert any(layer.name == f"{prefix}add" for layer in mobilenet_v2.layers) == has_residual
    assert out.shape == (1, 8 // stride, 8 // stride, filters)


def test_inverted_residual_adds_input_only_when_shapes_match():
    x = _images(2, 6, 8)
    block = InvertedResidual(8, expansion=3)
    out = _np(block(x, training=False))
    h = keras.ops.relu6(block.expand_bn(block.expand_conv(x)))
    h = keras.ops.relu6(block.depthwise_bn(block.depthwise_conv(h)))
    body = _np(block.project_bn(block.project_conv(h)))
    np.testing.assert_allclose(out, x + body, atol=1e-5)
    # The bottleneck output is linear: it keeps negative values (no ReLU after projection).
    assert (body < 0).any()
    no_skip = InvertedResidual(6, expansion=3)
    no_skip(x)
    assert not no_skip.has_residual


@pytest.mark.parametrize("block_cls,kwargs", [
    (ResidualBlock, {"filters": 4}),
    (ResidualBlock, {"filters": 6, "strides": 2}),
    (InvertedResidual, {"filters": 4, "expansion": 2}),
])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_per_block_mixed_policy_reaches_sub_layers(block_cls, kwargs, policy):
    # Every sub-layer gets the block's policy: shortcut and branch meet in one dtype, and the
    # block computes what the float32 block with the same weights computes, to half precision.
    x = _images(2, 6, 4)
    mixed, full = block_cls(**kwargs, dtype=policy), block_cls(**kwargs)
    out = mixed(x, training=False)
    full(x)
    full.set_weights(mixed.get_weights())
    assert keras.backend.standardize_dtype(out.dtype) == mixed.compute_dtype
    assert all(layer.dtype_policy.name == policy for layer in mixed._layers)
    assert all(w.dtype == "float32" for w in mixed.weights)
    np.testing.assert_allclose(_np(out).astype("float32"), _np(full(x, training=False)),
                               atol=5e-2 if policy == "mixed_float16" else 2e-1, rtol=5e-2)
