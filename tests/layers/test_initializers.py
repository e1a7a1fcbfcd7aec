"""Tests for layers.initializers: gain table, sampled statistics, seeds, configs and fans."""

import math

import keras
import numpy as np
import pytest

from layers.initializers import (
    HeNormal,
    NaiveUniform,
    XavierNormal,
    XavierUniform,
    compute_fans,
    gain,
    get_initializer,
)


def _sample(initializer, shape):
    return keras.ops.convert_to_numpy(initializer(shape, dtype="float32"))


def test_gain_table_is_exact():
    assert gain("linear") == 1.0
    assert gain("sigmoid") == 1.0
    assert gain("tanh") == 5.0 / 3.0
    assert gain("relu") == math.sqrt(2.0)
    assert gain("leaky_relu") == math.sqrt(2.0 / (1.0 + 0.01**2))
    assert gain("leaky_relu", negative_slope=0.2) == math.sqrt(2.0 / 1.04)
    assert gain("selu") == 0.75


def test_gain_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="tanh") as err:
        gain("swish")
    assert "leaky_relu" in str(err.value)


@pytest.mark.parametrize("g", [1.0, 5.0 / 3.0])
def test_xavier_uniform_bound_and_std(g):
    fan_in, fan_out = 1000, 1000
    w = _sample(XavierUniform(gain=g, seed=1), (fan_in, fan_out))
    bound = g * math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound
    # The sample maximum of 1e6 uniform draws sits within 0.1% of the bound.
    assert np.abs(w).max() >= 0.98 * bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3.0), rtol=0.02)
    assert abs(w.mean()) < 0.02 * bound


def test_xavier_normal_std_and_not_truncated():
    w = _sample(XavierNormal(gain=2.0, seed=2), (1000, 1000))
    std = 2.0 * math.sqrt(2.0 / 2000)
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    # A plain normal has ~4.6% of its mass beyond 2 std; a truncated one has none.
    assert np.mean(np.abs(w) > 2 * std) > 0.04


def test_he_normal_std_and_not_truncated():
    w = _sample(HeNormal(seed=3), (1000, 1000))
    std = math.sqrt(2.0 / 1000)
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    assert np.mean(np.abs(w) > 2 * std) > 0.04


def test_naive_uniform_bound_and_std():
    w = _sample(NaiveUniform(seed=4), (1000, 1000))
    bound = 1.0 / math.sqrt(1000)
    assert bound * 0.98 <= np.abs(w).max() <= bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3.0), rtol=0.02)


def test_conv_kernel_fans():
    # (kh, kw, in, out): receptive field 3*3 multiplies both channel counts.
    assert compute_fans((3, 3, 16, 32)) == (144, 288)
    assert compute_fans((64, 10)) == (64, 10)
    assert compute_fans((7,)) == (7, 7)
    w = _sample(HeNormal(seed=5), (5, 5, 40, 200))
    np.testing.assert_allclose(w.std(), math.sqrt(2.0 / (5 * 5 * 40)), rtol=0.02)
    w = _sample(XavierUniform(seed=6), (5, 5, 40, 200))
    bound = math.sqrt(6.0 / (25 * 40 + 25 * 200))
    assert bound * 0.98 <= np.abs(w).max() <= bound


@pytest.mark.parametrize("cls", [XavierUniform, XavierNormal, HeNormal, NaiveUniform])
def test_seeded_determinism(cls):
    a = _sample(cls(seed=7), (20, 30))
    b = _sample(cls(seed=7), (20, 30))
    c = _sample(cls(seed=8), (20, 30))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unseeded_follows_keras_global_seed():
    keras.utils.set_random_seed(123)
    a = _sample(XavierUniform(), (10, 10))
    keras.utils.set_random_seed(123)
    b = _sample(XavierUniform(), (10, 10))
    np.testing.assert_array_equal(a, b)


def test_bad_seed_rejected():
    with pytest.raises(ValueError, match="seed"):
        XavierUniform(seed="1")


@pytest.mark.parametrize(
    "initializer",
    [
        XavierUniform(gain=5.0 / 3.0, seed=1),
        XavierNormal(seed=2),
        HeNormal(gain=1.5),
        NaiveUniform(seed=3),
    ],
)
def test_config_round_trip(initializer):
    config = keras.initializers.serialize(initializer)
    restored = keras.initializers.deserialize(config)
    assert type(restored) is type(initializer)
    assert restored.get_config() == initializer.get_config()
    if initializer.get_config()["seed"] is not None:
        np.testing.assert_array_equal(_sample(restored, (4, 5)), _sample(initializer, (4, 5)))


def test_dense_layer_saves_and_restores_with_initializer(tmp_path):
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(4, kernel_initializer=XavierUniform(gain=2.0, seed=0))(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    init = restored.layers[-1].kernel_initializer
    assert isinstance(init, XavierUniform) and init.gain == 2.0 and init.seed == 0


def test_get_initializer_names():
    assert isinstance(get_initializer("zeros", "relu"), keras.initializers.Zeros)
    assert isinstance(get_initializer("naive", "relu"), NaiveUniform)
    xavier = get_initializer("xavier", "tanh", seed=1)
    assert isinstance(xavier, XavierUniform) and xavier.gain == 1.0 and xavier.seed == 1
    assert get_initializer("xavier_gain", "tanh").gain == 5.0 / 3.0
    he = get_initializer("he", "relu")
    assert isinstance(he, HeNormal) and he.gain == math.sqrt(2.0)
    with pytest.raises(ValueError, match="xavier_gain"):
        get_initializer("orthogonal", "relu")
    with pytest.raises(ValueError, match="valid names"):
        get_initializer("he", "gelu")
