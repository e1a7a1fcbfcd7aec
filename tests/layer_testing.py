"""A shared layer test in the spirit of keras' `run_layer_test` (keras/src/testing/test_case.py).

`run_layer_test` checks what every layer of the suite must do:

* build and call eagerly and symbolically (inside a functional model) on nested inputs
  (an array, or a list/tuple/dict of arrays), with every output's shape checked;
* survive a `get_config`/`from_config` round trip and a `.keras` save/load round trip
  (safe_mode on) with identical values for every output;
* masking: with `input_mask`, accept the mask as `mask=` and return `expected_output_mask`
  from `compute_mask`; inside a functional model, take the Keras mask from a
  `keras.layers.Masking` in front of it, give the same outputs as the explicit mask and hand
  `expected_output_mask` on to the next layer;
* mixed precision, per layer (`dtype="mixed_float16"`, `"mixed_bfloat16"`) and under a global
  `keras.config.set_dtype_policy`: every output has the dtype and shape that
  `compute_output_spec` announces (and that a functional model carries), every float
  variable stays float32, and the config keeps the policy;
* one training step that changes its trainable weights.
"""

import contextlib
import copy
import os
import tempfile

import keras
import numpy as np
from keras import ops, tree

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _is_shape(x):
    return isinstance(x, (tuple, list)) and all(d is None or isinstance(d, int) for d in x)


def _flatten_shapes(shapes):
    """Flattens a (possibly nested) structure of shape tuples into a list of shapes."""
    if _is_shape(shapes):
        return [tuple(shapes)]
    if isinstance(shapes, dict):
        shapes = [shapes[k] for k in sorted(shapes)]
    return [s for item in shapes for s in _flatten_shapes(item)]


def _is_float(x):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype))


@contextlib.contextmanager
def global_policy(name):
    """Sets the global dtype policy for the duration of the block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class _MaskOf(keras.layers.Layer):
    """Outputs the Keras mask it receives (as int32), so a functional model can return it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            raise AssertionError("the layer under test dropped the Keras mask")
        return ops.cast(mask, "int32")

    def compute_output_spec(self, inputs, mask=None):
        return keras.KerasTensor(inputs.shape[:2], dtype="int32")

    def compute_mask(self, inputs, mask=None):
        return None


def _zero_masked(x, mask):
    """`x` with the timesteps where `mask` is False set to zero (what Masking(0.0) reads)."""
    if mask is None:
        return x
    x = np.array(x, copy=True)
    x[~np.asarray(mask, bool)] = 0.0
    return x


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    call_kwargs=None,
    input_mask=None,
    expected_output_mask=None,
    expected_num_trainable_weights=None,
    expect_trainable_change=True,
    mixed_precision_policies=MIXED_POLICIES,
    check_global_policy=True,
    atol=1e-6,
):
    """Runs the standard battery of checks on a layer.

    Args:
        layer_cls: The layer class under test.
        init_kwargs: Keyword arguments for the constructor, or a zero-argument callable that
            returns fresh ones (when they hold layers, e.g. an RNN's cell, that each instance
            needs its own copy of).
        input_data: A NumPy array, or a list/tuple/dict of arrays (passed as one positional
            argument, as keras' attention layers take `[query, value]`).
        expected_output_shape: The output's shape, batch dimension included; for several
            outputs a structure of shapes in the outputs' (flattened) order.
        call_kwargs: Extra keyword arguments for `call` (e.g. `training=True`).
        input_mask: Optional boolean mask(s) (batch, T) with the structure of `input_data`
            (None leaves allowed). Masked timesteps of the float inputs are zeroed, so a
            `keras.layers.Masking(0.0)` reproduces the mask in the functional check.
        expected_output_mask: The mask `compute_mask` must return for `input_mask` (None: the
            layer must return no mask).
        expected_num_trainable_weights: If given, the number of trainable weights after build.
        expect_trainable_change: Whether one SGD step must change a trainable weight.
        mixed_precision_policies: Per-layer policies to check (empty to skip).
        check_global_policy: Also check under a global "mixed_float16" policy.
        atol: Tolerance for the round-trip output comparisons.

    Returns:
        The built (float32) layer instance.
    """
    call_kwargs = call_kwargs or {}
    make_kwargs = init_kwargs if callable(init_kwargs) else (lambda: dict(init_kwargs))
    expected_shapes = _flatten_shapes(expected_output_shape)
    if input_mask is not None:
        input_data = tree.map_structure_up_to(input_data, _zero_masked, input_data, input_mask)
    mask_kwargs = {} if input_mask is None else {"mask": input_mask}

    def check_shapes(outputs, batch_known=True):
        flat = tree.flatten(outputs)
        assert len(flat) == len(expected_shapes), (len(flat), expected_shapes)
        for out, shape in zip(flat, expected_shapes):
            got, want = tuple(out.shape), shape
            if not batch_known:
                got, want = got[1:], want[1:]
            assert got == want, (got, want)

    # Eager call, every output's shape.
    layer = layer_cls(**make_kwargs())
    outputs = layer(input_data, **call_kwargs, **mask_kwargs)
    check_shapes(outputs)
    reference = [_np(x) for x in tree.flatten(outputs)]
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights

    # Masking: the mask the layer hands on.
    if input_mask is not None:
        assert layer.supports_masking, f"{layer_cls.__name__} does not support masking"
        out_mask = layer.compute_mask(input_data, input_mask)
        if expected_output_mask is None:
            assert out_mask is None, out_mask
        else:
            np.testing.assert_array_equal(_np(out_mask), expected_output_mask)

    # Config round trip: same config, same outputs after copying weights.
    config = layer.get_config()
    # keras.layers.RNN.from_config consumes its argument, so hand it a copy.
    clone = layer_cls.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    clone(input_data, **call_kwargs, **mask_kwargs)
    clone.set_weights(layer.get_weights())
    for got, want in zip(tree.flatten(clone(input_data, **call_kwargs, **mask_kwargs)),
                         reference):
        np.testing.assert_allclose(_np(got), want, atol=atol)

    # Symbolic call inside a functional model, every output's shape.
    sym_inputs = tree.map_structure(
        lambda x: keras.Input(shape=x.shape[1:], dtype=x.dtype), input_data
    )
    sym_layer = layer_cls(**make_kwargs())
    sym_outputs = sym_layer(sym_inputs, **call_kwargs)
    check_shapes(sym_outputs, batch_known=False)
    model = keras.Model(sym_inputs, sym_outputs)

    # The same layer fed by Keras masks in a functional model: same outputs, mask handed on.
    if input_mask is not None:
        masked_inputs = tree.map_structure_up_to(
            input_data,
            lambda x, m: x if m is None else keras.layers.Masking(0.0)(x),
            sym_inputs, input_mask,
        )
        masked_layer = layer_cls(**make_kwargs())
        masked_outputs = masked_layer(masked_inputs, **call_kwargs)
        extra = []
        if expected_output_mask is not None:
            extra = [_MaskOf()(tree.flatten(masked_outputs)[0])]
        masked_model = keras.Model(sym_inputs, tree.flatten(masked_outputs) + extra)
        masked_layer.set_weights(layer.get_weights())
        results = masked_model(input_data)
        for got, want in zip(results, reference):
            np.testing.assert_allclose(_np(got), want, atol=max(atol, 1e-5))
        if expected_output_mask is not None:
            np.testing.assert_array_equal(_np(results[-1]), np.asarray(expected_output_mask, int))

    # .keras save/load round trip with safe_mode on, every output.
    reference_model = [_np(x) for x in tree.flatten(model(input_data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path, safe_mode=True)
    for got, want in zip(tree.flatten(restored(input_data)), reference_model):
        np.testing.assert_allclose(_np(got), want, atol=atol)

    # Mixed precision, per layer and global.
    for policy in mixed_precision_policies:
        mixed = layer_cls(**{**make_kwargs(), "dtype": policy})
        _check_mixed_precision(mixed, policy, input_data, call_kwargs, mask_kwargs)
        restored_policy = layer_cls.from_config(copy.deepcopy(mixed.get_config())).dtype_policy.name
        assert restored_policy == policy, restored_policy
    if check_global_policy:
        with global_policy("mixed_float16"):
            mixed = layer_cls(**make_kwargs())
            _check_mixed_precision(mixed, "mixed_float16", input_data, call_kwargs, mask_kwargs)

    # One training step moves the trainable weights.
    if expect_trainable_change and model.trainable_weights:
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=["mse"] * len(reference_model))
        rng = np.random.default_rng(0)
        targets = [rng.normal(size=r.shape).astype("float32") for r in reference_model]
        model.train_on_batch(input_data, targets if len(targets) > 1 else targets[0])
        after = [w.numpy() for w in model.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after)), "no weight changed"
    return layer


def _check_mixed_precision(layer, policy, input_data, call_kwargs, mask_kwargs):
    """Outputs in the dtypes `compute_output_spec` announces, float32 variables."""
    assert layer.dtype_policy.name == policy, layer.dtype_policy.name
    compute = layer.compute_dtype
    outputs = layer(input_data, **call_kwargs, **mask_kwargs)
    spec_inputs = tree.map_structure(
        lambda x: keras.KerasTensor(
            x.shape, dtype=compute if layer.autocast and _is_float(x) else x.dtype
        ),
        input_data,
    )
    specs = layer.compute_output_spec(spec_inputs, **call_kwargs)
    sym_layer_outputs = layer(
        tree.map_structure(lambda x: keras.Input(shape=x.shape[1:], dtype=x.dtype), input_data),
        **call_kwargs,
    )
    flat_out, flat_spec = tree.flatten(outputs), tree.flatten(specs)
    flat_sym = tree.flatten(sym_layer_outputs)
    assert len(flat_out) == len(flat_spec) == len(flat_sym)
    for out, spec, sym in zip(flat_out, flat_spec, flat_sym):
        dtype = keras.backend.standardize_dtype(out.dtype)
        assert dtype == spec.dtype == sym.dtype, (policy, dtype, spec.dtype, sym.dtype)
        assert tuple(out.shape) == tuple(spec.shape), (out.shape, spec.shape)
    for weight in layer.weights:
        if keras.backend.is_float_dtype(weight.dtype):
            assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
