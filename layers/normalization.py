"""Batch normalization (Ioffe & Szegedy, 2015) written out from its equations.

For a batch x with channels on `axis`, every channel j is normalised over all other axes
(N = the number of values per channel: batch * spatial positions):

    mu_j      = (1/N) sum_i x_ij                           (batch mean)
    sigma_j^2 = (1/N) sum_i (x_ij - mu_j)^2                (biased batch variance)
    x_hat_ij  = (x_ij - mu_j) / sqrt(sigma_j^2 + epsilon)
    y_ij      = gamma_j * x_hat_ij + beta_j

In training the batch statistics are used, and exponential moving averages are kept:

    moving_mean     <- momentum * moving_mean     + (1 - momentum) * mu
    moving_variance <- momentum * moving_variance + (1 - momentum) * sigma^2

In inference (and when the layer is frozen, `trainable=False`, as in Keras) the moving
statistics replace mu and sigma^2. Keras stores the biased variance too, so this layer and
`keras.layers.BatchNormalization` agree number for number given the same weights.

Under `tf.distribute.MirroredStrategy` each replica normalises with its own per-replica batch
statistics, and the moving averages keep the first replica's update, exactly as Keras'
layer does with `synchronized=False` (cross-replica statistics are not implemented here).
"""

import keras
from keras import ops

from layers.registration import register


@register
class BatchNorm(keras.layers.Layer):
    """Normalizes each channel with batch statistics in training, moving ones in inference.

    Args:
        axis: The channel axis (e.g. -1 for NHWC or (batch, features) inputs).
        momentum: Decay of the moving averages; closer to 1 means slower updates.
        epsilon: Added to the variance before the square root, for stability.
        center: Whether to learn the offset beta.
        scale: Whether to learn the scale gamma.
        beta_initializer: Initializer for beta.
        gamma_initializer: Initializer for gamma.
        moving_mean_initializer: Initializer for the moving mean.
        moving_variance_initializer: Initializer for the moving variance.
        beta_regularizer: Optional regularizer for beta.
        gamma_regularizer: Optional regularizer for gamma.
        **kwargs: Base `keras.layers.Layer` arguments (name, dtype, ...).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.gamma = None
        self.beta = None

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(f"axis={self.axis} is out of range for an input of rank {rank}.")
        channel_axis = self.axis % rank
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                f"The channel axis {self.axis} of input shape {input_shape} must be known."
            )
        shape = (channels,)
        # autocast=False: statistics and affine parameters stay float32 under mixed precision.
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.InputSpec(ndim=rank, axes={channel_axis: channels})
        self._reduction_axes = tuple(a for a in range(rank) if a != channel_axis)
        # Per-channel vectors broadcast against the input with this shape.
        self._broadcast_shape = tuple(channels if a == channel_axis else 1 for a in range(rank))

    def call(self, inputs, training=None):
        # Statistics in at least float32: half precision overflows on sums of squares.
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)

        if training and self.trainable:
            mean = ops.mean(x, axis=self._reduction_axes)
            # d(sigma^2)/d(mu) = -(2/N) sum_i (x_i - mu) = 0, so stopping the gradient through
            # mu here changes no gradient and spares the backward pass a reduction.
            centered = x - ops.stop_gradient(ops.reshape(mean, self._broadcast_shape))
            variance = ops.mean(ops.square(centered), axis=self._reduction_axes)
            m = self.momentum
            self.moving_mean.assign(
                m * self.moving_mean + (1.0 - m) * ops.cast(mean, self.moving_mean.dtype)
            )
            self.moving_variance.assign(
                m * self.moving_variance
                + (1.0 - m) * ops.cast(variance, self.moving_variance.dtype)
            )
        else:
            mean = ops.cast(self.moving_mean, compute_dtype)
            variance = ops.cast(self.moving_variance, compute_dtype)

        # gamma * (x - mu) / sqrt(var + eps) + beta, folded per channel into x * a + b so the
        # full-size tensor is touched by one multiply and one add.
        inv_std = ops.rsqrt(variance + self.epsilon)
        a = inv_std * ops.cast(self.gamma, compute_dtype) if self.scale else inv_std
        b = -mean * a
        if self.center:
            b = b + ops.cast(self.beta, compute_dtype)
        outputs = x * ops.reshape(a, self._broadcast_shape) + ops.reshape(b, self._broadcast_shape)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer
                ),
                "moving_variance_initializer": keras.initializers.serialize(
                    self.moving_variance_initializer
                ),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            }
        )
        return config
