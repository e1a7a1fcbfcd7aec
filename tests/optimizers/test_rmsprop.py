"""RMSProp: golden NumPy values (epsilon inside the root), equality with keras RMSprop."""

import keras
import numpy as np
import pytest

from optimizers.rmsprop import RMSProp

RNG = np.random.default_rng(1)
THETA0 = RNG.normal(size=(3, 4)).astype("float32")
GRADS = [RNG.normal(size=(3, 4)).astype("float32") for _ in range(5)]


def run_optimizer(optimizer, grads=GRADS):
    variable = keras.Variable(THETA0)
    history = []
    for gradient in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        history.append(keras.ops.convert_to_numpy(variable))
    return np.stack(history)


def rmsprop_reference(lr, rho, epsilon, grads=GRADS):
    theta = THETA0.astype("float64")
    mean_square = np.zeros_like(theta)
    history = []
    for g in grads:
        g = g.astype("float64")
        mean_square = rho * mean_square + (1 - rho) * g**2
        theta = theta - lr * g / np.sqrt(mean_square + epsilon)
        history.append(theta)
    return np.stack(history)


@pytest.mark.parametrize("rho, epsilon", [(0.9, 1e-7), (0.5, 1e-3)])
def test_golden_values(rho, epsilon):
    ours = run_optimizer(RMSProp(0.01, rho=rho, epsilon=epsilon))
    np.testing.assert_allclose(ours, rmsprop_reference(0.01, rho, epsilon), atol=1e-6)


def test_epsilon_inside_the_root():
    # With zero gradient history and a tiny gradient the step is lr*g/sqrt(g^2(1-rho) + eps),
    # far from the eps-outside value lr*g/(sqrt(g^2(1-rho)) + eps) when g^2 ~ eps.
    gradient = np.full((3, 4), 1e-3, "float32")
    ours = run_optimizer(RMSProp(0.01, rho=0.9, epsilon=1e-6), grads=[gradient])[0]
    inside = THETA0 - 0.01 * 1e-3 / np.sqrt(0.1 * 1e-6 + 1e-6)
    np.testing.assert_allclose(ours, inside, atol=1e-7)


@pytest.mark.parametrize("rho, epsilon", [(0.9, 1e-7), (0.8, 1e-4)])
def test_equals_keras_rmsprop(rho, epsilon):
    ours = run_optimizer(RMSProp(0.01, rho=rho, epsilon=epsilon))
    peer = run_optimizer(
        keras.optimizers.RMSprop(0.01, rho=rho, epsilon=epsilon, momentum=0.0, centered=False)
    )
    np.testing.assert_allclose(ours, peer, atol=1e-6)


def test_clipnorm_via_base_class():
    gradient = np.full((3, 4), 3.0, "float32")
    ours = run_optimizer(RMSProp(0.01, clipnorm=1.0), grads=[gradient])
    clipped = [gradient / np.linalg.norm(gradient)]
    np.testing.assert_allclose(ours, rmsprop_reference(0.01, 0.9, 1e-7, clipped), atol=1e-6)


def test_config_round_trip():
    optimizer = RMSProp(0.02, rho=0.8, epsilon=1e-5, global_clipnorm=1.0)
    config = optimizer.get_config()
    assert RMSProp.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs", [{"rho": 1.0}, {"rho": -0.5}, {"epsilon": 0.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RMSProp(**kwargs)
