"""SGD: golden NumPy values of both momentum forms, equality with keras.optimizers.SGD."""

import keras
import numpy as np
import pytest

from optimizers.sgd import SGD

RNG = np.random.default_rng(0)
THETA0 = RNG.normal(size=(3, 4)).astype("float32")
GRADS = [RNG.normal(size=(3, 4)).astype("float32") for _ in range(5)]


def run_optimizer(optimizer, theta0=THETA0, grads=GRADS):
    """Applies `grads` one step each to a fresh variable; returns its value after each step."""
    variable = keras.Variable(theta0)
    history = []
    for gradient in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        history.append(keras.ops.convert_to_numpy(variable))
    return np.stack(history)


def sgd_reference(lr, beta, form, nesterov, theta0=THETA0, grads=GRADS):
    """The update equations of the module docstring, in float64 NumPy."""
    theta = theta0.astype("float64")
    velocity = np.zeros_like(theta)
    history = []
    for g in grads:
        g = g.astype("float64")
        if beta == 0.0:
            theta = theta - lr * g
        elif form == "ema":
            velocity = beta * velocity + (1 - beta) * g
            step = beta * velocity + (1 - beta) * g if nesterov else velocity
            theta = theta - lr * step
        else:
            velocity = beta * velocity - lr * g
            theta = theta + (beta * velocity - lr * g if nesterov else velocity)
        history.append(theta)
    return np.stack(history)


@pytest.mark.parametrize(
    "beta, form, nesterov",
    [(0.0, "ema", False), (0.9, "ema", False), (0.9, "ema", True), (0.8, "classic", False),
     (0.8, "classic", True)],
)
def test_golden_values(beta, form, nesterov):
    ours = run_optimizer(SGD(0.1, momentum=beta, momentum_form=form, nesterov=nesterov))
    np.testing.assert_allclose(ours, sgd_reference(0.1, beta, form, nesterov), atol=1e-6)


def test_plain_sgd_has_no_slots():
    optimizer = SGD(0.1)
    run_optimizer(optimizer)
    assert len(optimizer.variables) == 2  # iterations and learning_rate only


def test_ema_form_differs_from_classic():
    ema = run_optimizer(SGD(0.1, momentum=0.9, momentum_form="ema"))
    classic = run_optimizer(SGD(0.1, momentum=0.9, momentum_form="classic"))
    assert np.abs(ema - classic).max() > 1e-2


def test_ema_form_with_rescaled_lr_equals_classic():
    # Constant lr: the EMA form with lr / (1 - beta) follows the classic path exactly.
    ema = run_optimizer(SGD(0.1 / (1 - 0.9), momentum=0.9, momentum_form="ema"))
    classic = run_optimizer(SGD(0.1, momentum=0.9, momentum_form="classic"))
    np.testing.assert_allclose(ema, classic, atol=1e-5)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_classic_equals_keras_sgd(momentum, nesterov):
    ours = run_optimizer(SGD(0.05, momentum=momentum, momentum_form="classic", nesterov=nesterov))
    peer = run_optimizer(keras.optimizers.SGD(0.05, momentum=momentum, nesterov=nesterov))
    np.testing.assert_allclose(ours, peer, atol=1e-6)


@pytest.mark.parametrize(
    "clip_kwargs, expected_factor",
    [({"clipnorm": 1.0}, "norm"), ({"global_clipnorm": 1.0}, "norm"), ({"clipvalue": 0.5}, "value")],
)
def test_base_class_clipping(clip_kwargs, expected_factor):
    gradient = np.full((3, 4), 2.0, "float32")  # norm sqrt(48) ~ 6.9, all entries > 0.5
    ours = run_optimizer(SGD(0.1, **clip_kwargs), grads=[gradient])[-1]
    if expected_factor == "norm":
        clipped = gradient / np.linalg.norm(gradient)
    else:
        clipped = np.clip(gradient, -0.5, 0.5)
    np.testing.assert_allclose(ours, THETA0 - 0.1 * clipped, atol=1e-6)


def test_weight_ema_of_base_class():
    optimizer = SGD(0.1, momentum=0.5, use_ema=True, ema_momentum=0.6)
    variable = keras.Variable(THETA0)
    for gradient in GRADS:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
    path = sgd_reference(0.1, 0.5, "ema", False)
    average = path[0]  # Keras copies the variable on the first step
    for theta in path[1:]:
        average = 0.6 * average + 0.4 * theta
    optimizer.finalize_variable_values([variable])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), average, atol=1e-6)


def test_numpy_scalar_momentum():
    ours = run_optimizer(SGD(0.1, momentum=np.float32(0.9)))
    np.testing.assert_allclose(ours, sgd_reference(0.1, 0.9, "ema", False), atol=1e-6)


def test_config_round_trip():
    optimizer = SGD(0.2, momentum=0.7, momentum_form="classic", nesterov=True, clipnorm=2.0)
    config = optimizer.get_config()
    restored = SGD.from_config(config)
    assert restored.get_config() == config
    assert config["momentum_form"] == "classic" and config["clipnorm"] == 2.0


@pytest.mark.parametrize(
    "kwargs", [{"momentum": 1.0}, {"momentum": -0.1}, {"momentum": 0.9, "momentum_form": "heavy"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SGD(0.1, **kwargs)


def test_jit_sparse_updates_apply_indexed_slices_like_the_formula():
    """Rows of an IndexedSlices gradient (repeated rows summed) get theta -= lr * g, in one
    XLA scatter; untouched rows stay bit-identical; the plain path agrees."""
    import tensorflow as tf

    theta0 = RNG.normal(size=(6, 3)).astype("float32")
    values = RNG.normal(size=(5, 3)).astype("float32")
    indices = np.array([4, 1, 4, 0, 4], "int32")
    expected = theta0.astype("float64")
    np.add.at(expected, indices, -0.3 * values.astype("float64"))
    results = []
    for jit in (True, False):
        optimizer = SGD(0.3, jit_sparse_updates=jit)
        variable = keras.Variable(theta0)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([6, 3]))
        optimizer.build([variable])
        _apply_in_graph(optimizer, variable, gradient)
        results.append(keras.ops.convert_to_numpy(variable))
        np.testing.assert_allclose(results[-1], expected, atol=1e-6)
        np.testing.assert_array_equal(results[-1][[2, 3, 5]], theta0[[2, 3, 5]])
    np.testing.assert_allclose(results[0], results[1], atol=1e-7)
    # Dense gradients and the config are unaffected.
    optimizer = SGD(0.1, jit_sparse_updates=True)
    assert SGD.from_config(optimizer.get_config()).jit_sparse_updates
    np.testing.assert_allclose(run_optimizer(optimizer), sgd_reference(0.1, 0.0, "ema", False),
                               atol=1e-6)


def _apply_in_graph(optimizer, variable, gradient):
    import tensorflow as tf

    tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))(gradient)
