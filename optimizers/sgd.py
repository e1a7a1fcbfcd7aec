"""Stochastic gradient descent with momentum, in the notes' form and in Keras' form.

Plain SGD (``momentum == 0``)::

    theta <- theta - lr * g

``momentum_form="ema"`` (the notes' form; velocity is an exponential moving average of
gradients, so its scale is that of one gradient)::

    v     <- beta * v + (1 - beta) * g
    theta <- theta - lr * v

``momentum_form="classic"`` (Polyak heavy ball as in ``keras.optimizers.SGD``; the velocity
accumulates ``lr``-scaled steps and reaches ``1 / (1 - beta)`` times one step)::

    v     <- beta * v - lr * g
    theta <- theta + v

With a constant learning rate the two forms trace the same path if the EMA form's learning
rate is ``lr / (1 - beta)``; they differ when the learning rate changes, because the classic
velocity remembers the old learning rate and the EMA velocity does not.

``nesterov=True`` looks one step ahead: the parameter step uses ``beta * v_new`` plus the
current gradient's share, i.e. ``theta <- theta - lr * (beta * v + (1 - beta) * g)`` (EMA) or
``theta <- theta + beta * v - lr * g`` (classic, as Keras).

``jit_sparse_updates=True`` (TensorFlow backend, plain SGD): a sparse gradient
(``tf.IndexedSlices``, e.g. from an embedding lookup) is applied as one XLA-compiled
``theta[rows] -= lr * values`` instead of TensorFlow's ``ResourceScatterSub`` kernel, which on
a CPU is ~10x slower for thousands of rows (it shards rows over the thread pool under locks);
XLA's scatter is a serial loop, so repeated rows are also summed in a fixed order.
"""

import functools

import keras
from keras import ops

from layers.registration import register
from optimizers.clipping import ClipAfterAllReduceMixin

MOMENTUM_FORMS = ("ema", "classic")


@register
class SGD(ClipAfterAllReduceMixin, keras.optimizers.Optimizer):
    """Gradient descent with optional EMA or classic (heavy-ball) momentum.

    Args:
        learning_rate: Float, `LearningRateSchedule` or callable. The step size `lr`.
        momentum: Float in `[0, 1)`. The velocity decay `beta`; `0` gives plain SGD and
            creates no slot variables.
        momentum_form: `"ema"` for `v = beta*v + (1-beta)*g; theta -= lr*v` (the notes),
            or `"classic"` for `v = beta*v - lr*g; theta += v` (`keras.optimizers.SGD`).
        nesterov: Whether to apply Nesterov momentum (see the module docstring).
        jit_sparse_updates: Apply sparse (`tf.IndexedSlices`) gradients of plain SGD with an
            XLA-compiled scatter (TensorFlow backend only; see the module docstring).
        name: Optional name of the optimizer.
        **kwargs: Base optimizer arguments (`clipnorm`, `clipvalue`, `global_clipnorm`,
            `weight_decay`, `use_ema`, `ema_momentum`, ...).
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        momentum_form="ema",
        nesterov=False,
        jit_sparse_updates=False,
        name="SGD",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"`momentum` must be a float in [0, 1), got {momentum!r}.")
        if momentum_form not in MOMENTUM_FORMS:
            raise ValueError(
                f"`momentum_form` must be one of {MOMENTUM_FORMS}, got {momentum_form!r}."
            )
        self.momentum = float(momentum)
        self.momentum_form = momentum_form
        self.nesterov = bool(nesterov)
        self.jit_sparse_updates = bool(jit_sparse_updates)
        if self.jit_sparse_updates and keras.backend.backend() != "tensorflow":
            raise ValueError("`jit_sparse_updates` needs the TensorFlow backend.")

    def build(self, var_list):
        """Creates one velocity slot per variable when momentum is used.

        Args:
            var_list: The model variables this optimizer will update.
        """
        if self.built:
            return
        super().build(var_list)
        self._velocities = []
        if self.momentum > 0.0:
            self._velocities = [
                self.add_variable_from_reference(variable, name="velocity")
                for variable in var_list
            ]

    def update_step(self, gradient, variable, learning_rate):
        """Applies one update to `variable`.

        Args:
            gradient: The (clipped) gradient for `variable`.
            variable: The model variable to update.
            learning_rate: The current learning rate.
        """
        lr = ops.cast(learning_rate, variable.dtype)
        if self.momentum == 0.0 and self.jit_sparse_updates and _is_indexed_slices(gradient):
            _xla_scatter_sub(variable.value if isinstance(variable, keras.Variable) else variable,
                             gradient.values, gradient.indices, lr)
            return
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0.0:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        beta = self.momentum
        velocity = self._velocities[self._get_variable_index(variable)]
        if self.momentum_form == "ema":
            # beta*v + (1-beta)*g written as v + (1-beta)*(g - v): one fewer pass over v.
            self.assign_add(velocity, ops.multiply(ops.subtract(gradient, velocity), 1.0 - beta))
            if self.nesterov:
                step = ops.add(ops.multiply(velocity, beta), ops.multiply(gradient, 1.0 - beta))
            else:
                step = velocity
            self.assign_sub(variable, ops.multiply(step, lr))
        else:
            scaled_gradient = ops.multiply(gradient, lr)
            self.assign(velocity, ops.subtract(ops.multiply(velocity, beta), scaled_gradient))
            if self.nesterov:
                self.assign_add(
                    variable, ops.subtract(ops.multiply(velocity, beta), scaled_gradient)
                )
            else:
                self.assign_add(variable, velocity)

    def get_config(self):
        """Returns the constructor arguments, base optimizer arguments included."""
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "momentum_form": self.momentum_form,
                "nesterov": self.nesterov,
                "jit_sparse_updates": self.jit_sparse_updates,
            }
        )
        return config


def _is_indexed_slices(gradient):
    import tensorflow as tf  # noqa: PLC0415 (TF-only path)

    return isinstance(gradient, tf.IndexedSlices)


@functools.cache
def _xla_scatter_sub_function():
    import tensorflow as tf  # noqa: PLC0415 (TF-only path)

    @tf.function(jit_compile=True, autograph=False)
    def scatter_sub(variable, values, indices, lr):
        values = tf.cast(values, variable.dtype) * lr
        variable.scatter_sub(tf.IndexedSlices(values, indices))

    return scatter_sub


def _xla_scatter_sub(variable, values, indices, lr):
    """variable[indices] -= lr * values in one XLA computation (repeated rows accumulate)."""
    _xla_scatter_sub_function()(variable, values, indices, lr)
