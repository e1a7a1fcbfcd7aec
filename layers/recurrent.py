"""LSTM and GRU cells written from their gate equations, for use in `keras.layers.RNN`.

LSTM (Hochreiter & Schmidhuber, 1997, with the forget gate of Gers et al., 2000). With input
x_t, previous output h_{t-1} and cell state c_{t-1}, one matrix product gives all four gates
(columns of the kernels ordered i, f, g, o, as in Keras):

    i_t = sigmoid(x_t W_i + h_{t-1} U_i + b_i)      input gate
    f_t = sigmoid(x_t W_f + h_{t-1} U_f + b_f)      forget gate
    g_t = tanh   (x_t W_g + h_{t-1} U_g + b_g)      candidate cell state (c~)
    o_t = sigmoid(x_t W_o + h_{t-1} U_o + b_o)      output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

`unit_forget_bias=True` starts b_f at 1 so the cell remembers by default early in training
(Jozefowicz et al., 2015).

GRU (Cho et al., 2014), in the "reset after" form Keras and cuDNN use (columns ordered
z, r, h; separate input and recurrent biases):

    z_t  = sigmoid(x_t W_z + b_z + h_{t-1} U_z + b'_z)          update gate
    r_t  = sigmoid(x_t W_r + b_r + h_{t-1} U_r + b'_r)          reset gate
    h~_t = tanh(x_t W_h + b_h + r_t * (h_{t-1} U_h + b'_h))     candidate
    h_t  = z_t * h_{t-1} + (1 - z_t) * h~_t
"""

import keras
from keras import ops

from layers.registration import register


class _GatedCell(keras.layers.Layer):
    """Shared constructor arguments, config and initial state of the gated cells."""

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"`units` must be a positive integer. Received: units={units}")
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.output_size = self.units

    def get_initial_state(self, batch_size=None):
        """Returns zero states, one `(batch_size, size)` tensor per entry of `state_size`."""
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_size]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": keras.regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config


@register
class LSTMCell(_GatedCell):
    """One LSTM step; wrap in `keras.layers.RNN` to run it over a sequence.

    Weights (same layout as `keras.layers.LSTMCell`, gate column blocks i, f, g, o):
    `kernel` (input_dim, 4 units), `recurrent_kernel` (units, 4 units), `bias` (4 units,).

    Args:
        units: Size of the output h and of the cell state c.
        activation: Activation of the candidate g and of c in the output (tanh).
        recurrent_activation: Activation of the gates i, f, o (sigmoid).
        use_bias: Whether the gates have a bias.
        kernel_initializer: Initializer for the input kernel W.
        recurrent_initializer: Initializer for the recurrent kernel U.
        bias_initializer: Initializer for the bias.
        unit_forget_bias: If True, the forget-gate bias starts at 1 (others use
            `bias_initializer`).
        kernel_regularizer: Optional regularizer for W.
        recurrent_regularizer: Optional regularizer for U.
        bias_regularizer: Optional regularizer for the bias.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.state_size = [self.units, self.units]

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 4 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
        )
        self.bias = None
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if self.unit_forget_bias:

                def bias_initializer(shape, dtype=None):
                    n = self.units
                    return ops.concatenate(
                        [
                            self.bias_initializer((n,), dtype=dtype),
                            ops.ones((n,), dtype=dtype),
                            self.bias_initializer((2 * n,), dtype=dtype),
                        ]
                    )

            self.bias = self.add_weight(
                shape=(4 * self.units,),
                name="bias",
                initializer=bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def call(self, inputs, states, training=None):
        h_prev, c_prev = states[0], states[1]
        # One product per operand for all four gates, then split: far fewer kernel launches
        # than eight small matmuls.
        z = ops.matmul(inputs, self.kernel) + ops.matmul(h_prev, self.recurrent_kernel)
        if self.use_bias:
            z = z + self.bias
        z_i, z_f, z_g, z_o = ops.split(z, 4, axis=-1)
        i = self.recurrent_activation(z_i)
        f = self.recurrent_activation(z_f)
        g = self.activation(z_g)
        o = self.recurrent_activation(z_o)
        c = f * c_prev + i * g
        h = o * self.activation(c)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@register
class GRUCell(_GatedCell):
    """One GRU step ("reset after" form); wrap in `keras.layers.RNN` to run it over a sequence.

    Weights (same layout as `keras.layers.GRUCell(reset_after=True)`, gate column blocks
    z, r, h): `kernel` (input_dim, 3 units), `recurrent_kernel` (units, 3 units) and
    `bias` (2, 3 units) whose row 0 is the input bias and row 1 the recurrent bias.

    Args:
        units: Size of the output h (the only state).
        activation: Activation of the candidate (tanh).
        recurrent_activation: Activation of the update and reset gates (sigmoid).
        use_bias: Whether the gates have biases.
        kernel_initializer: Initializer for the input kernel W.
        recurrent_initializer: Initializer for the recurrent kernel U.
        bias_initializer: Initializer for the biases.
        kernel_regularizer: Optional regularizer for W.
        recurrent_regularizer: Optional regularizer for U.
        bias_regularizer: Optional regularizer for the biases.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.state_size = [self.units]

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 3 * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 3 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(2, 3 * self.units),
                name="bias",
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def call(self, inputs, states, training=None):
        h_prev = states[0]
        x_proj = ops.matmul(inputs, self.kernel)
        h_proj = ops.matmul(h_prev, self.recurrent_kernel)
        if self.use_bias:
            x_proj = x_proj + self.bias[0]
            h_proj = h_proj + self.bias[1]
        x_z, x_r, x_h = ops.split(x_proj, 3, axis=-1)
        h_z, h_r, h_h = ops.split(h_proj, 3, axis=-1)
        z = self.recurrent_activation(x_z + h_z)
        r = self.recurrent_activation(x_r + h_r)
        # "Reset after": r scales the recurrent product, so U is applied to h_{t-1} once.
        candidate = self.activation(x_h + r * h_h)
        h = z * h_prev + (1.0 - z) * candidate
        return h, [h]
