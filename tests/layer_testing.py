"""A shared layer test in the spirit of keras' `run_layer_test`.

`run_layer_test` checks what every layer of the suite must do: build and call eagerly and
symbolically with the expected output shape, survive a `get_config`/`from_config` round trip
and a `.keras` save/load round trip (safe_mode on) with identical outputs, and take one
training step that changes its trainable weights.
"""

import copy
import os
import tempfile

import keras
import numpy as np


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    call_kwargs=None,
    expected_num_trainable_weights=None,
    expect_trainable_change=True,
    atol=1e-6,
):
    """Runs the standard battery of checks on a layer.

    Args:
        layer_cls: The layer class under test.
        init_kwargs: Keyword arguments for the constructor.
        input_data: A NumPy array, or a list of arrays for a multi-input layer (passed as a
            list positional argument).
        expected_output_shape: The shape of the (first) output, batch dimension included.
        call_kwargs: Extra keyword arguments for `call` (e.g. `training=True`).
        expected_num_trainable_weights: If given, the number of trainable weights after build.
        expect_trainable_change: Whether one SGD step must change a trainable weight.
        atol: Tolerance for the round-trip output comparisons.

    Returns:
        The built layer instance.
    """
    call_kwargs = call_kwargs or {}
    inputs = input_data

    # Eager call.
    layer = layer_cls(**init_kwargs)
    out = layer(inputs, **call_kwargs)
    first = _as_list(out)[0]
    assert tuple(first.shape) == tuple(expected_output_shape), (first.shape, expected_output_shape)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights

    # Config round trip: same config, same outputs after copying weights.
    config = layer.get_config()
    # keras.layers.RNN.from_config consumes its argument, so hand it a copy.
    clone = layer_cls.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(_as_list(clone(inputs, **call_kwargs))[0]),
        keras.ops.convert_to_numpy(first),
        atol=atol,
    )

    # Symbolic call inside a functional model.
    sym_inputs = [keras.Input(shape=x.shape[1:], dtype=x.dtype) for x in _as_list(inputs)]
    sym_arg = sym_inputs if isinstance(inputs, (list, tuple)) else sym_inputs[0]
    sym_layer = layer_cls(**init_kwargs)
    sym_out = _as_list(sym_layer(sym_arg, **call_kwargs))[0]
    assert tuple(sym_out.shape[1:]) == tuple(expected_output_shape[1:]), sym_out.shape
    model = keras.Model(sym_arg, sym_out)

    # .keras save/load round trip with safe_mode on.
    reference = keras.ops.convert_to_numpy(model(sym_arg_value(inputs)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(sym_arg_value(inputs))), reference, atol=atol
    )

    # One training step moves the trainable weights.
    if expect_trainable_change and model.trainable_weights:
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = np.random.default_rng(0).normal(size=reference.shape).astype("float32")
        model.train_on_batch(sym_arg_value(inputs), target)
        after = [w.numpy() for w in model.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after)), "no weight changed"
    return layer


def sym_arg_value(inputs):
    """The eager value to feed the functional model built from `inputs`."""
    return list(inputs) if isinstance(inputs, (list, tuple)) else inputs
