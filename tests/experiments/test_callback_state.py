"""Callback state in the checkpoint: a resumed run goes on as the uninterrupted one."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.runtime import epoch_batches
from experiments.runtime.callback_state import (decode, encode, get_callback_state,
                                                 set_callback_state)
from experiments.runtime.errors import ConfigError
from experiments.runtime.loop import Trainer
from experiments.runtime.task import SupervisedTask

RNG = np.random.default_rng(3)
X = RNG.normal(size=(64, 6)).astype("float32")
Y = (X[:, 0] > 0).astype("int32")


def _trainer(model_dir, callbacks):
    def model_fn():
        keras.utils.set_random_seed(2)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, activation="softmax")])

    task = SupervisedTask(model_fn, lambda: keras.optimizers.SGD(0.1),
                          keras.losses.SparseCategoricalCrossentropy(reduction=None))
    return Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), task, global_batch_size=16,
                   model_dir=str(model_dir), callbacks=callbacks, verbose=0)


def _fit(trainer, epochs):
    return trainer.fit(lambda e: epoch_batches(X, Y, 16, seed=0, epoch=e), epochs)


def _early_stopping():
    # The training loss falls every epoch, so in "max" mode epoch 1 is never beaten: with
    # patience 2 the run stops after epoch 3 and goes back to epoch 1's weights.
    return keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=2,
                                         restore_best_weights=True)


class EpochLog(keras.callbacks.Callback):
    """A callback with state of its own: the epochs it saw and an array per epoch."""

    state_attributes = ("epochs", "kernels")

    def __init__(self):
        super().__init__()
        self.epochs, self.kernels = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.kernels.append(self.model.weights[0].numpy())


class Counter(keras.callbacks.Callback):
    """State that is not plain attributes: the get_state / set_state protocol."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def get_state(self):
        return {"epochs": sorted(self.seen)}

    def set_state(self, state):
        self.seen = dict.fromkeys(state["epochs"], True)


def test_state_of_attributes_protocol_and_stateless_callbacks():
    log, counter = EpochLog(), Counter()
    log.epochs, log.kernels = [0, 1], [np.ones(2)]
    counter.seen = {2: True, 0: True}
    assert get_callback_state(keras.callbacks.Callback()) is None
    log_state = decode(encode(get_callback_state(log)))
    counter_state = decode(encode(get_callback_state(counter)))
    fresh_log, fresh_counter = EpochLog(), Counter()
    set_callback_state(fresh_log, log_state)
    set_callback_state(fresh_counter, counter_state)
    assert fresh_log.epochs == [0, 1] and fresh_counter.seen == {0: True, 2: True}
    np.testing.assert_array_equal(fresh_log.kernels[0], np.ones(2))


def test_encode_decode_round_trip():
    payload = {"stop": True, "none": None, "inf": math.inf, "float": np.float32(0.25),
               "nested": {"list": [1, "two", [3.0]]},
               "weights": [np.arange(6, dtype="float32").reshape(2, 3), np.array([1, 2])],
               "one": np.array(True)}
    out = decode(encode(payload))
    assert out["stop"] is True and out["none"] is None and out["inf"] == math.inf
    assert out["float"] == 0.25 and out["nested"] == {"list": [1, "two", [3.0]]}
    np.testing.assert_array_equal(out["weights"][0], payload["weights"][0])
    assert out["weights"][0].dtype == np.float32 and out["weights"][1].dtype == np.int64
    assert out["one"].item() is True


def test_early_stopping_resumed_equals_uninterrupted(tmp_path):
    whole_stopper, whole_log = _early_stopping(), EpochLog()
    whole = _trainer(tmp_path / "whole", [whole_stopper, whole_log])
    result = _fit(whole, 8)
    assert result.status == "stopped" and result.epochs_completed == 3
    assert whole_stopper.best_epoch == 0 and whole_log.epochs == [0, 1, 2]
    np.testing.assert_array_equal(whole.model.weights[0].numpy(), whole_log.kernels[0])

    # The same run cut after epoch 2 (as a kill after that checkpoint), then resumed by a
    # new process with new callbacks: without their state it would wait 2 more epochs.
    _fit(_trainer(tmp_path / "cut", [_early_stopping(), EpochLog()]), 2)
    stopper, log = _early_stopping(), EpochLog()
    resumed = _trainer(tmp_path / "cut", [stopper, log])
    result = _fit(resumed, 8)
    assert result.resumed_from_epoch == 2
    assert result.status == "stopped" and result.epochs_completed == 3
    assert stopper.best_epoch == 0 and stopper.stopped_epoch == 2 and log.epochs == [0, 1, 2]
    for a, b in zip(resumed.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(log.kernels, whole_log.kernels):
        np.testing.assert_array_equal(a, b)

    # Restarting the stopped run trains nothing more and ends on the best weights again.
    again_stopper = _early_stopping()
    again = _trainer(tmp_path / "whole", [again_stopper, EpochLog()])
    result = _fit(again, 8)
    assert result.status == "stopped" and result.epochs_completed == 3
    assert int(again.optimizer.iterations.numpy()) == int(whole.optimizer.iterations.numpy())
    np.testing.assert_array_equal(again.model.weights[0].numpy(), whole_log.kernels[0])


def test_other_callbacks_on_resume_is_a_clear_error(tmp_path):
    _fit(_trainer(tmp_path, [_early_stopping()]), 1)
    with pytest.raises(ConfigError, match="callbacks"):
        _fit(_trainer(tmp_path, [EpochLog()]), 2)


def test_checkpoint_without_callback_states_still_restores(tmp_path):
    # A checkpoint written before callback states were saved (weights and counters only).
    trainer = _trainer(tmp_path, [])
    _fit(trainer, 1)
    old = trainer._checkpoint_without_callbacks
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), 2).save(checkpoint_number=99)
    assert "callback_states" not in {
        name.split("/")[0] for name, _ in tf.train.list_variables(str(tmp_path / "checkpoints"))}
    resumed = _trainer(tmp_path, [EpochLog()])
    result = _fit(resumed, 2)
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 2
