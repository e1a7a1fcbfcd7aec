"""Tests for callbacks.layer_statistics: the statistics against NumPy / GradientTape, and the
callback's TensorBoard output from model.fit and from a CallbackList-driven loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from callbacks.layer_statistics import (
    LayerStatistics, activation_name, layer_statistics, write_histogram,
)
from tests.callbacks.tensorboard_events import read_tensors, scalars

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.normal(size=(32, 3)).astype("float32")


def _mlp(activation, kernel_stddev=None, bias=0.0, seed=1):
    kernel = (
        keras.initializers.RandomNormal(stddev=kernel_stddev, seed=seed)
        if kernel_stddev
        else keras.initializers.GlorotUniform(seed=seed)
    )
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                16, activation=activation, kernel_initializer=kernel,
                bias_initializer=keras.initializers.Constant(bias), name="hidden_1",
            ),
            keras.layers.Dense(
                16, activation=activation, kernel_initializer=kernel,
                bias_initializer=keras.initializers.Constant(bias), name="hidden_2",
            ),
            keras.layers.Dense(
                3, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1), name="head"
            ),
        ]
    )


def _numpy_forward(model, x):
    """Layer outputs of a Dense MLP computed in NumPy from its weights."""
    fns = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0), "linear": lambda a: a,
           "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a))}
    outputs, h = {}, x.astype(np.float64)
    for layer in model.layers:
        kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
        h = fns[activation_name(layer)](h @ kernel + bias)
        outputs[layer.name] = h
    return outputs


def test_tanh_with_huge_weights_saturates():
    stats = layer_statistics(_mlp("tanh", kernel_stddev=30.0), X)
    assert stats["hidden_1"]["saturation"] > 0.95
    assert stats["hidden_2"]["saturation"] > 0.95
    assert "saturation" not in stats["head"]  # linear head: no flat region


def test_tanh_with_xavier_weights_is_not_saturated():
    stats = layer_statistics(_mlp("tanh"), X)
    assert stats["hidden_1"]["saturation"] < 0.2


def test_relu_with_very_negative_bias_is_dead():
    stats = layer_statistics(_mlp("relu", bias=-100.0), X)
    assert stats["hidden_1"]["saturation"] == 1.0
    assert stats["hidden_2"]["saturation"] == 1.0
    assert stats["hidden_2"]["activation_std"] == 0.0


def test_mean_std_saturation_match_numpy():
    model = _mlp("sigmoid", kernel_stddev=2.0)
    stats = layer_statistics(model, X)
    expected = _numpy_forward(model, X)
    assert set(stats) == {"hidden_1", "hidden_2", "head"}
    for name, values in expected.items():
        np.testing.assert_allclose(stats[name]["activation_mean"], np.mean(values), atol=1e-5)
        np.testing.assert_allclose(stats[name]["activation_std"], np.std(values), atol=1e-5)
    h1 = expected["hidden_1"]
    np.testing.assert_allclose(
        stats["hidden_1"]["saturation"], np.mean((h1 < 0.01) | (h1 > 0.99)), atol=1.0 / h1.size
    )


def test_gradient_norm_matches_gradient_tape():
    model = _mlp("tanh")
    stats = layer_statistics(model, X, Y, loss_fn="mse")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(Y, model(X)))
    kernels = [layer.kernel for layer in model.layers]
    for layer, grad in zip(model.layers, tape.gradient(loss, kernels)):
        np.testing.assert_allclose(
            stats[layer.name]["gradient_norm"], tf.norm(grad).numpy(), rtol=1e-5
        )
    assert "gradient_norm" not in layer_statistics(model, X)["head"]


def test_functional_model_with_branches_and_activation_layer():
    inputs = keras.Input((6,))
    left = keras.layers.Dense(5, name="left")(inputs)
    left = keras.layers.Activation("relu6", name="left_act")(left)
    right = keras.layers.Dense(4, activation="tanh", name="right")(inputs)
    merged = keras.layers.Concatenate(name="concat")([left, right])
    dropped = keras.layers.Dropout(0.5, name="dropout")(merged)
    outputs = keras.layers.Dense(3, name="head")(dropped)
    model = keras.Model(inputs, outputs)

    stats = layer_statistics(model, X, Y, keras.losses.MeanSquaredError())
    # Weightless, activation-free layers (Concatenate, Dropout) are not reported by default.
    assert set(stats) == {"left", "left_act", "right", "head"}
    left_act = keras.Model(inputs, model.get_layer("left_act").output)(X).numpy()
    np.testing.assert_allclose(stats["left_act"]["activation_std"], np.std(left_act), atol=1e-5)
    np.testing.assert_allclose(stats["left_act"]["saturation"], np.mean(left_act == 0))
    # Inference mode: dropout is off, so the head sees the plain concatenation.
    head_out = model(X, training=False).numpy()
    np.testing.assert_allclose(stats["head"]["activation_mean"], np.mean(head_out), atol=1e-5)
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(Y, model(X, training=False))
    grad = tape.gradient(loss, model.get_layer("right").kernel)
    np.testing.assert_allclose(stats["right"]["gradient_norm"], tf.norm(grad).numpy(), rtol=1e-5)

    only = layer_statistics(model, X, layers=["right"])
    assert list(only) == ["right"]


def test_sequential_built_without_input_matches_functional_copy():
    model = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", name="a"), keras.layers.ReLU(name="r"),
         keras.layers.Dense(2, name="b")]
    )
    model(X)  # built by calling, so it has no functional graph
    stats = layer_statistics(model, X)
    assert set(stats) == {"a", "r", "b"}
    a = np.tanh(X @ model.get_layer("a").kernel.numpy() + model.get_layer("a").bias.numpy())
    r = np.maximum(a, 0)
    np.testing.assert_allclose(stats["a"]["activation_std"], np.std(a), atol=1e-5)
    np.testing.assert_allclose(stats["r"]["saturation"], np.mean(r == 0))


def _expected_steps(total_steps, every):
    return [0] + [s for s in range(1, total_steps + 1) if s % every == 0]


def test_callback_from_fit_writes_scalars_and_histograms(tmp_path):
    model = _mlp("tanh")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    at_init = layer_statistics(model, X, Y, "mse")
    callback = LayerStatistics(tmp_path, X, Y, every_n_steps=3)  # loss from model.compile
    model.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])  # 12 steps

    events = read_tensors(tmp_path)
    for name in ("hidden_1", "hidden_2", "head"):
        for stat in ("activation_mean", "activation_std", "gradient_norm"):
            tag = f"layer_statistics/{name}/{stat}"
            assert sorted(scalars(events, tag)) == _expected_steps(12, 3), tag
            np.testing.assert_allclose(scalars(events, tag)[0], at_init[name][stat], rtol=1e-5)
        assert f"activations/{name}" in events and f"gradients/{name}" in events
    assert "layer_statistics/hidden_1/saturation" in events
    assert "layer_statistics/head/saturation" not in events
    # The last record is the trained model.
    final = layer_statistics(model, X, Y, "mse")
    np.testing.assert_allclose(
        scalars(events, "layer_statistics/hidden_1/activation_std")[12],
        final["hidden_1"]["activation_std"], rtol=1e-5,
    )
    histogram = events["activations/hidden_1"][0][1]  # (bins, 3): left edge, right edge, count
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() == X.shape[0] * 16


def test_callback_from_callback_list_loop(tmp_path):
    model = _mlp("relu")
    optimizer = keras.optimizers.Adam(1e-2)
    model.compile(optimizer=optimizer, loss="mse")
    callbacks = keras.callbacks.CallbackList(
        [LayerStatistics(tmp_path, X, Y, loss_fn="mse", every_n_steps=2, histograms=False)],
        model=model,
    )
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)  # 2 steps per epoch
    callbacks.on_train_begin()
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        for step, (x, y) in enumerate(dataset):
            callbacks.on_train_batch_begin(step)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.mean_squared_error(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            callbacks.on_train_batch_end(step, {"loss": float(loss)})
        callbacks.on_epoch_end(epoch, {"loss": float(loss)})
    callbacks.on_train_end()

    events = read_tensors(tmp_path)
    assert sorted(scalars(events, "layer_statistics/hidden_2/saturation")) == [0, 2, 4, 6]
    assert sorted(scalars(events, "layer_statistics/head/gradient_norm")) == [0, 2, 4, 6]
    assert not any(tag.startswith("activations/") for tag in events)
    final = layer_statistics(model, X, Y, "mse")
    np.testing.assert_allclose(
        scalars(events, "layer_statistics/head/gradient_norm")[6], final["head"]["gradient_norm"],
        rtol=1e-5,
    )


def test_callback_without_optimizer_counts_batches(tmp_path):
    model = _mlp("tanh")  # not compiled: no optimizer, no loss -> activations only
    callback = LayerStatistics(tmp_path, X, every_n_steps=2)
    callback.set_model(model)
    callback.on_train_begin()
    for step in range(5):
        callback.on_train_batch_end(step)
    callback.on_train_end()
    events = read_tensors(tmp_path)
    assert sorted(scalars(events, "layer_statistics/hidden_1/activation_std")) == [0, 2, 4]
    assert "layer_statistics/hidden_1/gradient_norm" not in events


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        LayerStatistics(tmp_path, X, every_n_steps=0)
    with pytest.raises(ValueError, match="not built"):
        layer_statistics(keras.Sequential([keras.layers.Dense(2)]), X)


def test_callback_under_mirrored_strategy(tmp_path, mirrored_two_cpus):
    strategy = mirrored_two_cpus
    with strategy.scope():
        model = _mlp("tanh")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0,
              callbacks=[LayerStatistics(tmp_path, X, Y, every_n_steps=2)])  # 4 steps
    written = scalars(read_tensors(tmp_path), "layer_statistics/hidden_1/gradient_norm")
    assert sorted(written) == [0, 2, 4]
    final = layer_statistics(model, X, Y, "mse")
    np.testing.assert_allclose(written[4], final["hidden_1"]["gradient_norm"], rtol=1e-5)


@pytest.mark.parametrize("values", [
    RNG.normal(size=(64, 33)),                       # many distinct values
    np.array([0.0, 0.0, 1.0, 2.5, 2.5, 2.5, -7.0]),   # ties on bucket edges and the max
    np.full((5, 4), 0.25),                           # a single value: zero-width buckets
    np.zeros((0,)),                                  # no data
])
def test_histogram_buckets_match_tensorboard(tmp_path, values):
    """NumPy buckets written by `write_histogram` equal what `tf.summary.histogram` writes."""
    with tf.summary.create_file_writer(str(tmp_path)).as_default():
        tf.summary.histogram("reference", values, step=3)
        write_histogram("ours", values, step=3)
    events = read_tensors(tmp_path)
    (step, ours), = events["ours"]
    (_, reference), = events["reference"]
    assert step == 3 and ours.shape == reference.shape == (30, 3)
    np.testing.assert_array_equal(ours[:, 2], reference[:, 2])  # counts exactly
    np.testing.assert_allclose(ours[:, :2], reference[:, :2], rtol=1e-12, atol=0)
