"""WarmupCosineDecay: closed-form values, monotonicity, validation, use as a learning rate."""

import math

import keras
import numpy as np
import pytest

from optimizers.schedules import WarmupCosineDecay
from optimizers.sgd import SGD


def lr_at(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def reference(t, peak, warmup, total, final):
    if t < warmup:
        return peak * t / warmup
    if t >= total:
        return final
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("final_lr", [0.0, 0.01])
def test_closed_form_values(final_lr):
    schedule = WarmupCosineDecay(peak_lr=0.1, warmup_steps=10, total_steps=110, final_lr=final_lr)
    expected = {0: 0.0, 5: 0.05, 10: 0.1, 60: final_lr + (0.1 - final_lr) * 0.5, 110: final_lr,
                500: final_lr}
    for step, value in expected.items():
        assert lr_at(schedule, step) == pytest.approx(value, abs=1e-6), step
    for step in (3, 37, 85, 109):
        assert lr_at(schedule, step) == pytest.approx(
            reference(step, 0.1, 10, 110, final_lr), abs=1e-6
        )


def test_notes_form_when_final_lr_is_zero():
    # The notes: lr_t = eta * 0.5 * (1 + cos(pi * (t - T_w) / (T - T_w))).
    schedule = WarmupCosineDecay(peak_lr=2.0, warmup_steps=4, total_steps=20)
    for t in range(4, 21):
        notes = 2.0 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 16))
        assert lr_at(schedule, t) == pytest.approx(notes, abs=1e-6)


def test_monotone():
    schedule = WarmupCosineDecay(peak_lr=1.0, warmup_steps=20, total_steps=100, final_lr=0.1)
    values = np.array([lr_at(schedule, t) for t in range(0, 130)])
    assert np.all(np.diff(values[:21]) > 0)
    assert np.all(np.diff(values[20:]) <= 1e-7)
    assert values.max() == pytest.approx(1.0, abs=1e-6)


def test_no_warmup_starts_at_peak():
    schedule = WarmupCosineDecay(peak_lr=0.5, warmup_steps=0, total_steps=10)
    assert lr_at(schedule, 0) == pytest.approx(0.5, abs=1e-6)
    assert lr_at(schedule, 5) == pytest.approx(0.25, abs=1e-6)
    assert lr_at(schedule, 10) == pytest.approx(0.0, abs=1e-6)


def test_as_optimizer_learning_rate():
    schedule = WarmupCosineDecay(peak_lr=0.1, warmup_steps=2, total_steps=6, final_lr=0.02)
    optimizer = SGD(learning_rate=schedule)
    variable = keras.Variable(np.zeros(3, "float32"))
    gradient = keras.ops.ones(3)
    applied = []
    for step in range(8):
        before = keras.ops.convert_to_numpy(variable).copy()
        optimizer.apply_gradients([(gradient, variable)])
        applied.append(float(before[0] - keras.ops.convert_to_numpy(variable)[0]))
    expected = [reference(t, 0.1, 2, 6, 0.02) for t in range(8)]
    np.testing.assert_allclose(applied, expected, atol=1e-6)
    restored = SGD.from_config(optimizer.get_config())
    assert restored.get_config()["learning_rate"]["class_name"] == "WarmupCosineDecay"
    assert restored.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]


def test_config_round_trip_and_serialization():
    schedule = WarmupCosineDecay(peak_lr=0.3, warmup_steps=5, total_steps=50, final_lr=0.03)
    assert WarmupCosineDecay.from_config(schedule.get_config()).get_config() == schedule.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineDecay)
    assert lr_at(restored, 17) == pytest.approx(lr_at(schedule, 17), abs=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(peak_lr=0.0, warmup_steps=1, total_steps=10),
        dict(peak_lr=0.1, warmup_steps=-1, total_steps=10),
        dict(peak_lr=0.1, warmup_steps=10, total_steps=10),
        dict(peak_lr=0.1, warmup_steps=20, total_steps=10),
        dict(peak_lr=0.1, warmup_steps=1.5, total_steps=10),
        dict(peak_lr=0.1, warmup_steps=1, total_steps=10, final_lr=0.2),
        dict(peak_lr=0.1, warmup_steps=1, total_steps=10, final_lr=-0.1),
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        WarmupCosineDecay(**kwargs)
