"""RMSProp (Tieleman & Hinton, 2012, Coursera lecture 6.5).

Per parameter, a running mean of squared gradients scales the step::

    E[g^2] <- rho * E[g^2] + (1 - rho) * g^2
    theta  <- theta - lr * g / sqrt(E[g^2] + epsilon)

Epsilon placement: inside the square root, as in the notes and in ``keras.optimizers.RMSprop``
(PyTorch's ``RMSprop`` adds it outside, ``sqrt(E) + eps``). Inside the root it bounds the step
by ``lr * |g| / sqrt(epsilon)``; the two forms differ only where ``E[g^2]`` is of order
``epsilon`` (about 1e-7, i.e. gradients of order 3e-4 with the default).

Without Keras' ``centered`` and ``momentum`` options this is exactly ``keras.optimizers.RMSprop``.
"""

import keras
from keras import ops

from layers.registration import register
from optimizers.clipping import ClipAfterAllReduceMixin


@register
class RMSProp(ClipAfterAllReduceMixin, keras.optimizers.Optimizer):
    """Divides each gradient by the root of a running mean of its squares.

    Args:
        learning_rate: Float, `LearningRateSchedule` or callable. The step size `lr`.
        rho: Float in `[0, 1)`. Decay of the running mean of squared gradients.
        epsilon: Positive float added to `E[g^2]` inside the square root.
        name: Optional name of the optimizer.
        **kwargs: Base optimizer arguments (`clipnorm`, `clipvalue`, `global_clipnorm`,
            `weight_decay`, `use_ema`, `ema_momentum`, ...).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, name="RMSProp", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"`rho` must be in [0, 1), got {rho!r}.")
        if not epsilon > 0.0:
            raise ValueError(f"`epsilon` must be positive, got {epsilon!r}.")
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        """Creates the running mean of squared gradients, one slot per variable.

        Args:
            var_list: The model variables this optimizer will update.
        """
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = [
            self.add_variable_from_reference(variable, name="mean_square") for variable in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        """Applies one update to `variable`.

        Args:
            gradient: The (clipped) gradient for `variable`.
            variable: The model variable to update.
            learning_rate: The current learning rate.
        """
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        mean_square = self._mean_squares[self._get_variable_index(variable)]
        self.assign(
            mean_square,
            ops.add(
                ops.multiply(mean_square, self.rho),
                ops.multiply(ops.square(gradient), 1.0 - self.rho),
            ),
        )
        self.assign_sub(
            variable,
            ops.divide(ops.multiply(gradient, lr), ops.sqrt(ops.add(mean_square, self.epsilon))),
        )

    def get_config(self):
        """Returns the constructor arguments, base optimizer arguments included."""
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon})
        return config
