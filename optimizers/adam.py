"""Adam (Kingma & Ba, 2015, Algorithm 1) and its two weight-decay variants.

Adam, at step ``t = 1, 2, ...``::

    m     <- beta_1 * m + (1 - beta_1) * g
    v     <- beta_2 * v + (1 - beta_2) * g^2
    m_hat  = m / (1 - beta_1^t)
    v_hat  = v / (1 - beta_2^t)
    theta <- theta - lr * m_hat / (sqrt(v_hat) + epsilon)

The bias correction divides by ``1 - beta^t`` (not ``1 - beta``: a slip in one of the notes).
``keras.optimizers.Adam`` implements the paper's cheaper "epsilon hat" form
``theta -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon_hat)`` with a
constant ``epsilon_hat``, which equals Algorithm 1 only up to epsilon (Algorithm 1 corresponds to
``epsilon_hat = epsilon * sqrt(1 - beta_2^t)``, which changes with ``t``). This module computes
exactly Algorithm 1 at the cost of the Keras form: the bias corrections are folded into scalars
and ``epsilon * sqrt(1 - beta_2^t)`` is passed as the step's epsilon hat. ``1 - beta^t`` is
evaluated as ``-expm1(t * log1p(-(1 - beta)))`` because in float32 ``1 - 0.999^t`` loses most of
its digits at small ``t`` (Keras' float32 ``1 - power`` moves early steps by ~1e-5 relative).
Defaults are the paper's (``epsilon=1e-8``; Keras uses ``1e-7``).

AdamW (Loshchilov & Hutter, 2019, "decoupled weight decay")::

    theta <- theta - lr * AdamUpdate - lr * weight_decay * theta_old

The decay uses the parameter before this step, exactly like ``keras.optimizers.AdamW`` (which
shrinks the variable first and then applies the Adam step computed from the same gradient).
Like Keras, the decay is scaled by the learning rate (the paper scales it by the schedule
multiplier only).

AdamL2 (the "old approach", coupled L2 / L2-regularised Adam)::

    g <- g + l2 * theta;  then Adam on g

Here the penalty passes through the adaptive denominator, so weights with large gradient
history are decayed less -- the reason AdamW exists.
"""

import keras
from keras import ops

from layers.registration import register
from optimizers.clipping import ClipAfterAllReduceMixin


def _validate_adam_args(beta_1, beta_2, epsilon):
    for arg_name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"`{arg_name}` must be in [0, 1), got {beta!r}.")
    if not epsilon >= 0.0:
        raise ValueError(f"`epsilon` must be non-negative, got {epsilon!r}.")


def _one_minus_power(beta, step):
    """Returns `1 - beta**step` without float32 cancellation.

    In float32, `1 - 0.999**t` loses about 4 of its 7 digits for small `t` (and `0.999` itself
    is rounded), which moves Adam's early steps by ~1e-5 relative. `-expm1(t * log1p(-d))`
    with `d = 1 - beta` taken exactly from the Python float keeps full precision.
    """
    return -ops.expm1(step * ops.log1p(ops.cast(-(1.0 - beta), step.dtype)))


@register
class Adam(ClipAfterAllReduceMixin, keras.optimizers.Optimizer):
    """Adam with bias-corrected moments and epsilon outside the root (Algorithm 1).

    Args:
        learning_rate: Float, `LearningRateSchedule` or callable. The step size `lr`.
        beta_1: Float in `[0, 1)`. Decay of the first-moment (mean) estimate.
        beta_2: Float in `[0, 1)`. Decay of the second-moment (uncentered variance) estimate.
        epsilon: Non-negative float added to `sqrt(v_hat)` (Algorithm 1's epsilon).
        name: Optional name of the optimizer.
        **kwargs: Base optimizer arguments (`clipnorm`, `clipvalue`, `global_clipnorm`,
            `weight_decay`, `use_ema`, `ema_momentum`, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name="Adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        _validate_adam_args(beta_1, beta_2, epsilon)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        """Creates the first- and second-moment slots, one each per variable.

        Args:
            var_list: The model variables this optimizer will update.
        """
        if self.built:
            return
        super().build(var_list)
        self._first_moments = [
            self.add_variable_from_reference(variable, name="first_moment") for variable in var_list
        ]
        self._second_moments = [
            self.add_variable_from_reference(variable, name="second_moment")
            for variable in var_list
        ]

    def _adjust_gradient(self, gradient, variable):
        """Hook for coupled penalties (AdamL2); Adam uses the gradient as given."""
        del variable
        return gradient

    def _adam_step(self, variable, m, v, lr):
        """Returns `lr * m_hat / (sqrt(v_hat) + eps)` for the current step."""
        step = ops.cast(self.iterations + 1, variable.dtype)
        bias_1 = _one_minus_power(self.beta_1, step)
        bias_2 = _one_minus_power(self.beta_2, step)
        # lr*(m/b1) / (sqrt(v/b2) + eps) == [lr*sqrt(b2)/b1] * m / (sqrt(v) + eps*sqrt(b2)):
        # the same number with the corrections on scalars instead of whole tensors.
        sqrt_bias_2 = ops.sqrt(bias_2)
        scale = lr * sqrt_bias_2 / bias_1
        epsilon_hat = self.epsilon * sqrt_bias_2
        return ops.divide(ops.multiply(m, scale), ops.add(ops.sqrt(v), epsilon_hat))

    def _update(self, gradient, variable, learning_rate, decay=None):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = self._adjust_gradient(ops.cast(gradient, variable.dtype), variable)
        index = self._get_variable_index(variable)
        m = self._first_moments[index]
        v = self._second_moments[index]
        # beta*m + (1-beta)*g written as m + (1-beta)*(g - m): one fewer pass over m.
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1.0 - self.beta_2))
        if decay is not None:
            # Decoupled decay uses the pre-step parameter; shrinking first is the same update.
            self.assign_sub(variable, ops.multiply(variable, lr * ops.cast(decay, variable.dtype)))
        self.assign_sub(variable, self._adam_step(variable, m, v, lr))

    def update_step(self, gradient, variable, learning_rate):
        """Applies one Adam update to `variable`.

        Args:
            gradient: The (clipped) gradient for `variable`.
            variable: The model variable to update.
            learning_rate: The current learning rate.
        """
        self._update(gradient, variable, learning_rate)

    def get_config(self):
        """Returns the constructor arguments, base optimizer arguments included."""
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


@register
class AdamW(Adam):
    """Adam with decoupled weight decay: `theta -= lr * (AdamUpdate + weight_decay * theta)`.

    Variables excluded with `exclude_from_weight_decay(...)` get plain Adam. The decay is
    applied in `update_step`, next to the Adam step it belongs to, instead of in the base
    class's separate pass (disabled here); as in Keras, it shrinks the parameter by
    `lr * weight_decay * theta` before the Adam step, which is the same as subtracting both
    terms computed from the pre-step parameter.

    Args:
        learning_rate: Float, `LearningRateSchedule` or callable. The step size `lr`.
        weight_decay: Non-negative float `lambda`; the decay per step is `lr * lambda * theta`.
        beta_1: Float in `[0, 1)`. Decay of the first-moment estimate.
        beta_2: Float in `[0, 1)`. Decay of the second-moment estimate.
        epsilon: Non-negative float added to `sqrt(v_hat)`.
        name: Optional name of the optimizer.
        **kwargs: Other base optimizer arguments (`clipnorm`, `use_ema`, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name="AdamW",
        **kwargs,
    ):
        if weight_decay is None or not weight_decay >= 0.0:
            raise ValueError(f"`weight_decay` must be a non-negative float, got {weight_decay!r}.")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            weight_decay=weight_decay,
            **kwargs,
        )

    def _apply_weight_decay(self, variables):
        # Decay is applied inside update_step, fused with the Adam step.
        del variables

    def update_step(self, gradient, variable, learning_rate):
        """Applies one decoupled-decay Adam update to `variable`.

        Args:
            gradient: The (clipped) gradient for `variable`.
            variable: The model variable to update.
            learning_rate: The current learning rate.
        """
        decay = self.weight_decay if self._use_weight_decay(variable) else None
        self._update(gradient, variable, learning_rate, decay=decay)


@register
class AdamL2(Adam):
    """Adam on the L2-penalised gradient `g + l2 * theta` (coupled L2, "Adam + L2").

    Equivalent to adding `0.5 * l2 * ||theta||^2` to the loss. Variables excluded with
    `exclude_from_weight_decay(...)` (e.g. biases) get no penalty.

    Args:
        learning_rate: Float, `LearningRateSchedule` or callable. The step size `lr`.
        l2: Non-negative float `lambda` added as `lambda * theta` to each gradient.
        beta_1: Float in `[0, 1)`. Decay of the first-moment estimate.
        beta_2: Float in `[0, 1)`. Decay of the second-moment estimate.
        epsilon: Non-negative float added to `sqrt(v_hat)`.
        name: Optional name of the optimizer.
        **kwargs: Base optimizer arguments (`clipnorm`, `use_ema`, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        l2=0.0001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        name="AdamL2",
        **kwargs,
    ):
        if l2 is None or not l2 >= 0.0:
            raise ValueError(f"`l2` must be a non-negative float, got {l2!r}.")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )
        self.l2 = float(l2)

    def _adjust_gradient(self, gradient, variable):
        if self.l2 == 0.0 or not self._use_weight_decay(variable):
            return gradient
        return ops.add(gradient, ops.multiply(variable, self.l2))

    def get_config(self):
        """Returns the constructor arguments, base optimizer arguments included."""
        config = super().get_config()
        config["l2"] = self.l2
        return config
