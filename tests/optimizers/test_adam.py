"""Adam, AdamW, AdamL2: golden NumPy values of Algorithm 1, equality with keras Adam/AdamW."""

import keras
import numpy as np
import pytest

from optimizers.adam import Adam, AdamL2, AdamW

RNG = np.random.default_rng(2)
THETA0 = RNG.normal(size=(3, 4)).astype("float32")
GRADS = [RNG.normal(size=(3, 4)).astype("float32") for _ in range(5)]


def run_optimizer(optimizer, grads=GRADS, theta0=THETA0):
    variable = keras.Variable(theta0)
    history = []
    for gradient in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        history.append(keras.ops.convert_to_numpy(variable))
    return np.stack(history)


def adam_reference(lr, beta_1, beta_2, epsilon, weight_decay=0.0, l2=0.0, grads=GRADS):
    """Kingma & Ba Algorithm 1 (+ decoupled decay or coupled L2), float64 NumPy."""
    theta = THETA0.astype("float64")
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    history = []
    for t, g in enumerate(grads, start=1):
        g = g.astype("float64") + l2 * theta
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        m_hat = m / (1 - beta_1**t)
        v_hat = v / (1 - beta_2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + epsilon) - lr * weight_decay * theta
        history.append(theta)
    return np.stack(history)


@pytest.mark.parametrize(
    "beta_1, beta_2, epsilon", [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-8), (0.9, 0.999, 0.5)]
)
def test_adam_golden_values(beta_1, beta_2, epsilon):
    # epsilon=0.5 makes the placement of epsilon (Algorithm 1 vs epsilon hat) matter.
    ours = run_optimizer(Adam(0.1, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon))
    np.testing.assert_allclose(ours, adam_reference(0.1, beta_1, beta_2, epsilon), atol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    # Bias correction by (1 - beta^t) makes step 1 exactly lr * g / |g| (up to epsilon).
    ours = run_optimizer(Adam(0.1, epsilon=1e-12), grads=GRADS[:1])[0]
    np.testing.assert_allclose(ours, THETA0 - 0.1 * np.sign(GRADS[0]), atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.004, 0.5])
def test_adamw_golden_values(weight_decay):
    ours = run_optimizer(AdamW(0.1, weight_decay=weight_decay))
    expected = adam_reference(0.1, 0.9, 0.999, 1e-8, weight_decay=weight_decay)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("l2", [0.01, 1.0])
def test_adam_l2_golden_values(l2):
    ours = run_optimizer(AdamL2(0.1, l2=l2))
    np.testing.assert_allclose(ours, adam_reference(0.1, 0.9, 0.999, 1e-8, l2=l2), atol=1e-6)


def test_adamw_and_adam_l2_differ():
    adamw = run_optimizer(AdamW(0.1, weight_decay=0.5))
    adam_l2 = run_optimizer(AdamL2(0.1, l2=0.5))
    assert np.abs(adamw - adam_l2).max() > 1e-2


# Keras computes 1 - beta_2**t in float32, which for beta_2=0.999 carries ~1e-5 relative error
# in the first steps (ours uses expm1/log1p); with beta_2=0.9 both are exact to float32.
KERAS_CASES = [(0.9, 1e-6), (0.999, 1e-5)]


@pytest.mark.parametrize("beta_2, atol", KERAS_CASES)
def test_adam_equals_keras_adam_with_tiny_epsilon(beta_2, atol):
    ours = run_optimizer(Adam(0.1, beta_2=beta_2, epsilon=1e-12))
    peer = run_optimizer(keras.optimizers.Adam(0.1, beta_2=beta_2, epsilon=1e-12))
    np.testing.assert_allclose(ours, peer, atol=atol)


def test_adam_close_to_keras_adam_with_default_epsilon():
    # Keras' epsilon hat is epsilon * sqrt(1 - beta_2^t) in Algorithm 1 terms: the paths differ
    # by about lr * epsilon / sqrt(v_hat) per step, i.e. ~1e-6 here.
    ours = run_optimizer(Adam(0.1, beta_2=0.9, epsilon=1e-7))
    peer = run_optimizer(keras.optimizers.Adam(0.1, beta_2=0.9, epsilon=1e-7))
    np.testing.assert_allclose(ours, peer, atol=1e-5)
    assert np.abs(ours - peer).max() > 0.0


@pytest.mark.parametrize("weight_decay", [0.004, 0.3])
@pytest.mark.parametrize("beta_2, atol", KERAS_CASES)
def test_adamw_equals_keras_adamw(weight_decay, beta_2, atol):
    kwargs = dict(weight_decay=weight_decay, beta_2=beta_2, epsilon=1e-12)
    ours = run_optimizer(AdamW(0.1, **kwargs))
    peer = run_optimizer(keras.optimizers.AdamW(0.1, **kwargs))
    np.testing.assert_allclose(ours, peer, atol=atol)


def test_exclude_from_weight_decay():
    for optimizer in (AdamW(0.1, weight_decay=0.5), AdamL2(0.1, l2=0.5)):
        excluded = keras.Variable(THETA0, name="bias")
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        for gradient in GRADS:
            optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), excluded)])
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(excluded), adam_reference(0.1, 0.9, 0.999, 1e-8)[-1],
            atol=1e-6,
        )


@pytest.mark.parametrize("optimizer_cls", [Adam, AdamW, AdamL2])
def test_clipnorm_via_base_class(optimizer_cls):
    gradients = [g * 100.0 for g in GRADS]
    ours = run_optimizer(optimizer_cls(0.1, clipnorm=1.0), grads=gradients)
    peer = run_optimizer(optimizer_cls(0.1), grads=[g / np.linalg.norm(g) for g in gradients])
    np.testing.assert_allclose(ours, peer, atol=1e-6)


def test_config_round_trip():
    for optimizer in (
        Adam(0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6, clipvalue=1.0),
        AdamW(0.01, weight_decay=0.1),
        AdamL2(0.01, l2=0.02),
    ):
        config = optimizer.get_config()
        restored = type(optimizer).from_config(config)
        assert restored.get_config() == config
    assert AdamW(weight_decay=0.1).get_config()["weight_decay"] == 0.1
    assert AdamL2(l2=0.02).get_config()["l2"] == 0.02


@pytest.mark.parametrize(
    "factory",
    [lambda: Adam(beta_1=1.0), lambda: Adam(beta_2=-0.1), lambda: Adam(epsilon=-1.0),
     lambda: AdamW(weight_decay=None), lambda: AdamW(weight_decay=-1.0), lambda: AdamL2(l2=-1.0)],
)
def test_bad_arguments(factory):
    with pytest.raises(ValueError):
        factory()
