"""Tests for layers.recurrent: RNN(LSTMCell) vs keras.layers.LSTM, RNN(GRUCell) vs keras GRU."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.recurrent import GRUCell, LSTMCell
from tests.layer_testing import run_layer_test

BATCH, STEPS, FEATURES, UNITS = 3, 5, 4, 6


@keras.saving.register_keras_serializable(package="keras_fundamentals_tests")
class _RNN(keras.layers.RNN):
    """keras.layers.RNN whose `from_config` leaves its argument intact.

    `keras.layers.RNN.from_config` pops "cell" from the dict it is given, so comparing the
    clone's config with the original one (as `run_layer_test` does) fails on Keras itself.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(dict(config), custom_objects=custom_objects)


def _sequence(seed=0):
    return np.random.default_rng(seed).normal(size=(BATCH, STEPS, FEATURES)).astype("float32")


def _copy_random_weights(ours, ref, seed=1):
    """Gives both layers the same random weights (shapes match since the layouts agree)."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0.0, 0.5, w.shape).astype("float32") for w in ref.get_weights()]
    ref.set_weights(weights)
    ours.set_weights(weights)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_matches_keras_lstm(return_sequences):
    x = _sequence()
    ours = keras.layers.RNN(LSTMCell(UNITS), return_sequences=return_sequences, return_state=True)
    ref = keras.layers.LSTM(UNITS, return_sequences=return_sequences, return_state=True)
    ours(x)
    ref(x)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in ref.get_weights()]
    _copy_random_weights(ours, ref)
    for got, want in zip(ours(x), ref(x)):  # output, h_T, c_T
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)


def test_lstm_matches_numpy_equations_one_step():
    cell = LSTMCell(UNITS, unit_forget_bias=False, bias_initializer="random_normal")
    x = np.random.default_rng(2).normal(size=(BATCH, FEATURES)).astype("float32")
    h0 = np.random.default_rng(3).normal(size=(BATCH, UNITS)).astype("float32")
    c0 = np.random.default_rng(4).normal(size=(BATCH, UNITS)).astype("float32")
    h, (h_state, c) = cell(x, [h0, c0])
    kernel, recurrent_kernel, bias = cell.get_weights()

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    z = x @ kernel + h0 @ recurrent_kernel + bias
    i, f, g, o = np.split(z, 4, axis=-1)
    c_expected = sigmoid(f) * c0 + sigmoid(i) * np.tanh(g)
    h_expected = sigmoid(o) * np.tanh(c_expected)
    np.testing.assert_allclose(c.numpy(), c_expected, atol=1e-5)
    np.testing.assert_allclose(h.numpy(), h_expected, atol=1e-5)
    np.testing.assert_array_equal(h.numpy(), h_state.numpy())


def test_lstm_gradients_match_keras():
    x = tf.constant(_sequence(5))
    ours = keras.layers.RNN(LSTMCell(UNITS), return_sequences=True)
    ref = keras.layers.LSTM(UNITS, return_sequences=True)
    ours(x)
    ref(x)
    _copy_random_weights(ours, ref)
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads.append(tape.gradient(loss, layer.trainable_weights))
    for g_ours, g_ref in zip(*grads):
        np.testing.assert_allclose(g_ours.numpy(), g_ref.numpy(), atol=1e-4, rtol=1e-4)


def test_unit_forget_bias_initial_values():
    cell = LSTMCell(3)
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    cell = LSTMCell(3, unit_forget_bias=False)
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), np.zeros(12))


@pytest.mark.parametrize("return_sequences", [False, True])
def test_gru_matches_keras_gru_reset_after(return_sequences):
    x = _sequence(6)
    ours = keras.layers.RNN(GRUCell(UNITS), return_sequences=return_sequences)
    ref = keras.layers.GRU(UNITS, return_sequences=return_sequences, reset_after=True)
    ours(x)
    ref(x)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in ref.get_weights()]
    _copy_random_weights(ours, ref, seed=7)
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), atol=1e-5, rtol=1e-5)


def test_bad_units_raise():
    with pytest.raises(ValueError, match="units"):
        LSTMCell(0)


# Example 0 ends in two padded steps, example 2 has one hole: RNN carries the state over it.
MASK = np.array([[True, True, True, False, False], [True] * 5, [True, False, True, True, True]])


@pytest.mark.parametrize("cell_cls", [LSTMCell, GRUCell])
def test_run_layer_test_rnn_wrapped(cell_cls):
    run_layer_test(
        _RNN,
        lambda: {"cell": cell_cls(3, kernel_regularizer="l2"), "return_sequences": True},
        _sequence(8),
        (BATCH, STEPS, 3),
        input_mask=MASK,
        expected_output_mask=MASK,
        expected_num_trainable_weights=3,
        atol=1e-5,
    )


@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_lstm_matches_keras_lstm(return_sequences):
    # The same mask given explicitly and as a Keras mask (Masking in a functional model).
    x = _sequence(9)
    x[~MASK] = 0.0
    ours = keras.layers.RNN(LSTMCell(UNITS), return_sequences=return_sequences)
    ref = keras.layers.LSTM(UNITS, return_sequences=return_sequences)
    ours(x)
    ref(x)
    _copy_random_weights(ours, ref, seed=10)
    np.testing.assert_allclose(_np(ours(x, mask=MASK)), _np(ref(x, mask=MASK)), atol=1e-5)
    results = []
    for layer in (ours, ref):
        inputs = keras.Input((STEPS, FEATURES))
        out = layer(keras.layers.Masking(0.0)(inputs))
        assert (getattr(out, "_keras_mask", None) is not None) == return_sequences
        results.append(_np(keras.Model(inputs, out)(x)))
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)
    unmasked = _np(ours(x))
    assert not np.allclose(results[0], unmasked, atol=1e-3)  # the mask mattered


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_lstm_matches_keras(policy):
    x = _sequence(11)
    ours = keras.layers.RNN(LSTMCell(UNITS, dtype=policy), return_sequences=True, dtype=policy)
    ref = keras.layers.LSTM(UNITS, return_sequences=True, dtype=policy)
    ours(x)
    ref(x)
    _copy_random_weights(ours, ref, seed=12)
    got, want = ours(x, mask=MASK), ref(x, mask=MASK)
    assert got.dtype == want.dtype
    assert all(w.dtype == "float32" for w in ours.weights)
    np.testing.assert_allclose(_np(got).astype("float32"), _np(want).astype("float32"),
                               atol=2e-2 if policy == "mixed_float16" else 1e-1)


def _np(x):
    return keras.ops.convert_to_numpy(x)
