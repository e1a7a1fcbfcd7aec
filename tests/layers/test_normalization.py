"""Tests for layers.normalization.BatchNorm against NumPy and keras.layers.BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.normalization import BatchNorm
from tests.layer_testing import run_layer_test


def _pair(shape, axis=-1, **kwargs):
    """Our layer and Keras' built with the same random gamma/beta/moving statistics."""
    ours = BatchNorm(axis=axis, **kwargs)
    ref = keras.layers.BatchNormalization(axis=axis, **kwargs)
    ours.build(shape)
    ref.build(shape)
    rng = np.random.default_rng(0)
    channels = shape[axis]
    weights = [
        rng.normal(1.0, 0.3, channels),  # gamma
        rng.normal(0.0, 0.3, channels),  # beta
        rng.normal(0.0, 0.5, channels),  # moving_mean
        rng.uniform(0.5, 2.0, channels),  # moving_variance
    ]
    weights = [w.astype("float32") for w in weights]
    ours.set_weights(weights)
    ref.set_weights(weights)
    return ours, ref


@pytest.mark.parametrize(
    "shape,axis", [((16, 5), -1), ((4, 6, 7, 3), -1), ((4, 3, 6, 7), 1)], ids=["2d", "nhwc", "nchw"]
)
def test_matches_keras_training_and_inference(shape, axis):
    ours, ref = _pair(shape, axis=axis, momentum=0.9)
    rng = np.random.default_rng(1)
    for step in range(3):
        x = rng.normal(2.0, 3.0, shape).astype("float32")
        np.testing.assert_allclose(
            ours(x, training=True).numpy(), ref(x, training=True).numpy(), atol=1e-5, rtol=1e-5
        )
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), ref.moving_variance.numpy(), atol=1e-5)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    np.testing.assert_allclose(
        ours(x, training=False).numpy(), ref(x, training=False).numpy(), atol=1e-5, rtol=1e-5
    )


def test_training_output_matches_numpy_equations():
    shape = (8, 4, 4, 3)
    layer, _ = _pair(shape, momentum=0.8, epsilon=1e-3)
    gamma, beta, moving_mean, moving_var = layer.get_weights()
    x = np.random.default_rng(2).normal(1.0, 2.0, shape).astype("float32")
    mu = x.mean(axis=(0, 1, 2))
    var = ((x - mu) ** 2).mean(axis=(0, 1, 2))  # biased, 1/N
    expected = gamma * (x - mu) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(layer(x, training=True).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.8 * moving_mean + 0.2 * mu, atol=1e-6)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.8 * moving_var + 0.2 * var, atol=1e-5
    )


def test_gradients_match_keras():
    shape = (6, 4, 4, 3)
    ours, ref = _pair(shape)
    x = tf.constant(np.random.default_rng(3).normal(size=shape).astype("float32"))
    w = tf.constant(np.random.default_rng(4).normal(size=shape).astype("float32"))
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * w)
        grads.append(tape.gradient(loss, [x] + layer.trainable_weights))
    for g_ours, g_ref in zip(*grads):
        np.testing.assert_allclose(g_ours.numpy(), g_ref.numpy(), atol=1e-4, rtol=1e-4)


def test_frozen_layer_uses_moving_statistics_and_no_center_scale():
    shape = (8, 5)
    ours, ref = _pair(shape, center=True, scale=True)
    ours.trainable = False
    ref.trainable = False
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    np.testing.assert_allclose(
        ours(x, training=True).numpy(), ref(x, training=True).numpy(), atol=1e-5
    )
    plain = BatchNorm(center=False, scale=False)
    y = plain(x, training=True).numpy()
    assert not plain.trainable_weights
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=0), x.var(axis=0) / (x.var(axis=0) + 1e-3), atol=1e-5)


def test_bad_axis_raises():
    with pytest.raises(ValueError, match="axis"):
        BatchNorm(axis=3)(np.zeros((2, 3), "float32"))


def test_run_layer_test_2d_and_4d():
    rng = np.random.default_rng(6)
    run_layer_test(
        BatchNorm,
        {"momentum": 0.9, "epsilon": 1e-3, "gamma_regularizer": "l2"},
        rng.normal(size=(8, 5)).astype("float32"),
        (8, 5),
        call_kwargs={"training": True},
        expected_num_trainable_weights=2,
        atol=1e-5,
    )
    run_layer_test(
        BatchNorm,
        {"axis": -1},
        rng.normal(size=(4, 3, 3, 2)).astype("float32"),
        (4, 3, 3, 2),
        expected_num_trainable_weights=2,
        atol=1e-5,
    )


def test_mirrored_strategy_fit_matches_keras(mirrored_two_cpus):
    x = np.random.default_rng(7).normal(2.0, 3.0, (16, 5)).astype("float32")
    y = np.zeros_like(x)
    results = []
    for cls in (BatchNorm, keras.layers.BatchNormalization):
        with mirrored_two_cpus.scope():
            model = keras.Sequential([keras.Input((5,)), cls(momentum=0.5)])
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append([w.numpy() for w in model.layers[0].weights])
    for ours, ref in zip(*results):
        np.testing.assert_allclose(ours, ref, atol=1e-5)
