"""Tests for callbacks.learning_rate: logs and TensorBoard values against schedule(step)."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.learning_rate import LearningRateLogger, current_learning_rate
from tests.callbacks.tensorboard_events import read_tensors, scalars

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 4)).astype("float32")
Y = RNG.normal(size=(24, 1)).astype("float32")


def _model(optimizer):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)


def _eta(schedule, step):
    return float(schedule(step))


def test_fit_with_schedule_logs_schedule_at_global_step(tmp_path):
    schedule = _schedule()
    model = _model(keras.optimizers.SGD(schedule))
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        X, Y, batch_size=8, epochs=3, verbose=0, shuffle=False,  # 3 steps per epoch
        callbacks=[
            LearningRateLogger(tmp_path / "tb", every_n_steps=2),
            keras.callbacks.CSVLogger(csv_path),
        ],
    )
    expected_epochs = [_eta(schedule, 3 * (epoch + 1)) for epoch in range(3)]
    np.testing.assert_allclose(history.history["learning_rate"], expected_epochs, rtol=1e-6)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    from_csv = [float(row["learning_rate"]) for row in rows]
    np.testing.assert_allclose(from_csv, expected_epochs, rtol=1e-6)

    written = scalars(read_tensors(tmp_path / "tb"), "learning_rate")
    # Train begin (0), every 2 steps (2, 4, 6, 8) and epoch ends (3, 6, 9).
    assert sorted(written) == [0, 2, 3, 4, 6, 8, 9]
    for step, value in written.items():
        np.testing.assert_allclose(value, _eta(schedule, step), rtol=1e-6)


def test_float_learning_rate_without_log_dir(tmp_path):
    model = _model(keras.optimizers.Adam(0.003))
    history = model.fit(X, Y, batch_size=12, epochs=2, verbose=0, callbacks=[LearningRateLogger()])
    np.testing.assert_allclose(history.history["learning_rate"], [0.003, 0.003], rtol=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_callback_list_loop_with_schedule(tmp_path):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2, 5], [1.0, 0.5, 0.25])
    optimizer = keras.optimizers.SGD(schedule)
    model = _model(optimizer)
    history = keras.callbacks.History()
    # CallbackList copies the logs dict, so the loop reads the added entry back from History.
    callbacks = keras.callbacks.CallbackList(
        [LearningRateLogger(tmp_path, every_n_steps=1), history], model=model
    )
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)  # 3 steps per epoch
    callbacks.on_train_begin()
    for epoch in range(2):
        callbacks.on_epoch_begin(epoch)
        for step, (x, y) in enumerate(dataset):
            callbacks.on_train_batch_begin(step)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.mean_squared_error(y, model(x)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            callbacks.on_train_batch_end(step, {"loss": float(loss)})
        callbacks.on_epoch_end(epoch, {"loss": float(loss)})
    callbacks.on_train_end()

    assert history.history["learning_rate"] == [0.5, 0.25]  # schedule(3), schedule(6)
    written = scalars(read_tensors(tmp_path), "learning_rate")
    assert sorted(written) == list(range(7))
    assert [written[s] for s in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_current_learning_rate_follows_iterations():
    schedule = _schedule()
    optimizer = keras.optimizers.SGD(schedule)
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    optimizer.iterations.assign(5)
    np.testing.assert_allclose(current_learning_rate(optimizer), 0.1 * 0.5 ** 2.5, rtol=1e-6)


def test_missing_optimizer_and_bad_period_raise():
    with pytest.raises(ValueError, match="every_n_steps"):
        LearningRateLogger(every_n_steps=0)
    callback = LearningRateLogger()
    callback.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="optimizer"):
        callback.on_epoch_end(0, {})
