"""Callback state saved inside the training checkpoint, so a resumed run goes on as one run.

A Keras callback keeps Python state between epochs (EarlyStopping's best value, patience count
and best weights; a topic's per-epoch curve). Without it a run killed and resumed forgets that
state: early stopping restarts its patience, keeps other best weights, stops at another epoch.
`CallbackStates` is a `tf.train.experimental.PythonState` in the trainer's checkpoint, written
atomically with the weights. A callback takes part by naming the attributes that hold its state,

    state_attributes = ("curve", "best", "best_weights")   # a class attribute

or, for state that is not plain attributes, by defining `get_state() -> dict` and
`set_state(state)`. Values: JSON-able, NumPy arrays, or lists of them; they are set back after
`on_train_begin` (which resets Keras callbacks). `keras.callbacks.EarlyStopping` takes part
through the same attribute table. The trainer's own "a callback stopped training" flag travels
with them, so restarting a stopped run does not train on. Encoding: one `.npz` (no pickles),
JSON for everything but the arrays.
"""

import io
import json

import keras
import numpy as np
import tensorflow as tf

from experiments.runtime.errors import ConfigError

# Keras callbacks that keep state between epochs, and the attributes that hold it.
_KERAS_STATE_ATTRIBUTES = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_weights",
                                    "best_epoch"),
}


def _state_attributes(callback):
    names = getattr(callback, "state_attributes", None)
    if names is None:
        names = next((names for cls, names in _KERAS_STATE_ATTRIBUTES.items()
                      if isinstance(callback, cls)), None)
    return names


def get_callback_state(callback):
    """The callback's state dict, or None if it keeps none worth restoring."""
    if hasattr(callback, "get_state"):
        return callback.get_state()
    names = _state_attributes(callback)
    return None if names is None else {name: getattr(callback, name) for name in names}


def set_callback_state(callback, state):
    """Hands a state from `get_callback_state` back to the callback."""
    if hasattr(callback, "set_state"):
        callback.set_state(state)
        return
    for name in _state_attributes(callback):
        setattr(callback, name, state[name])


def encode(payload):
    """Bytes of a dict whose leaves are JSON-able values, NumPy arrays or lists of arrays."""
    arrays = {}

    def walk(value):
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    meta = json.dumps(walk(payload))
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.array(meta), **arrays)
    return buffer.getvalue()


def decode(data):
    """Inverse of `encode` (arrays come back as NumPy arrays)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}

    def walk(value):
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return arrays[value["__array__"]]
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(json.loads(str(arrays.pop("__meta__"))))


class CallbackStates(tf.train.experimental.PythonState):
    """The state of a trainer's callbacks (and its stop flag), as one checkpointed object.

    Args:
        callbacks: The callbacks, in the order the trainer calls them.
        model: The model whose `stop_training` flag is saved with them.
    """

    def __init__(self, callbacks, model):
        self._callbacks = list(callbacks)
        self._model = model
        self._restored = None

    def serialize(self):
        return encode({
            "stop_training": bool(getattr(self._model, "stop_training", False)),
            "callbacks": [[type(cb).__name__, get_callback_state(cb)]
                          for cb in self._callbacks],
        })

    def deserialize(self, string_value):
        self._restored = decode(string_value)

    def apply(self):
        """Hands each callback its restored state (once); call after `on_train_begin`.

        Returns:
            Whether the restored checkpoint was written after a callback stopped training
            (False when nothing was restored).

        Raises:
            ConfigError: If the checkpoint was written with other callbacks than this run's.
        """
        restored, self._restored = self._restored, None
        if restored is None:
            return False
        saved = restored["callbacks"]
        names = [type(cb).__name__ for cb in self._callbacks]
        if [name for name, _ in saved] != names:
            raise ConfigError(f"the checkpoint was written with callbacks "
                              f"{[name for name, _ in saved]}, this run has {names}; "
                              "resume with the same ones or use a new --model_dir")
        for callback, (_, state) in zip(self._callbacks, saved):
            if state is not None:
                set_callback_state(callback, state)
        return bool(restored["stop_training"])
