"""Convolutional building blocks: the ResNet residual block and the MobileNetV2 inverted residual.

ResidualBlock (He et al. 2016, "Deep Residual Learning for Image Recognition", eq. 1-2 and
fig. 2, the "basic" block):

    F(x) = BN(conv_kxk(ReLU(BN(conv_kxk(x, stride)))))
    y    = ReLU(F(x) + shortcut(x))        (post_activation=True, the paper)
    y    = F(x) + shortcut(x)              (post_activation=False)

shortcut(x) = x when shape is kept, else BN(conv_1x1(x, stride)) (the paper's option B).

InvertedResidual (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", table 1), with c_in input channels and expansion t:

    h = ReLU6(BN(conv_1x1(x, t * c_in)))       (skipped when t == 1)
    h = ReLU6(BN(depthwise_3x3(h, stride)))
    y = BN(conv_1x1(h, filters))               (linear bottleneck: no activation)
    y = x + y                                  only when stride == 1 and c_in == filters

Images are channels-last, (batch, height, width, channels). Every sub-layer gets the block's
dtype policy (as keras' composite layers do), so `dtype="mixed_float16"` works per block: float32
weights, float16 compute, and the shortcut and branch meet in one dtype.
"""

import keras
from keras import layers, ops

from layers.registration import register


@register
class ResidualBlock(keras.layers.Layer):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus an identity or 1x1 projection shortcut.

    Args:
        filters: Output channels.
        kernel_size: Size of both convolutions of F.
        strides: Stride of the first convolution (and of the projection shortcut).
        post_activation: Apply ReLU after the addition (the paper); if False the block
            returns F(x) + shortcut(x).
        zero_init_last_bn: Start the last BN's gamma at 0, so F(x) = 0 and the block starts
            as (ReLU of) its shortcut (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
        momentum: Moving-average momentum of the BN layers.
        epsilon: BN epsilon.
        kernel_initializer: Initialiser of the convolutions (He normal suits ReLU).
        kernel_regularizer: Optional regulariser of the convolution kernels.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        post_activation=True,
        zero_init_last_bn=False,
        momentum=0.99,
        epsilon=1e-3,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.post_activation = post_activation
        self.zero_init_last_bn = zero_init_last_bn
        self.momentum = momentum
        self.epsilon = epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _conv(self, kernel_size, strides, name):
        return layers.Conv2D(
            self.filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,  # the following BN's beta makes a conv bias redundant
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            name=name,
            dtype=self.dtype_policy,
        )

    def _bn(self, name, gamma="ones"):
        return layers.BatchNormalization(
            momentum=self.momentum,
            epsilon=self.epsilon,
            gamma_initializer=gamma,
            name=name,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        self.conv1 = self._conv(self.kernel_size, self.strides, "conv1")
        self.bn1 = self._bn("bn1")
        self.conv2 = self._conv(self.kernel_size, 1, "conv2")
        self.bn2 = self._bn("bn2", "zeros" if self.zero_init_last_bn else "ones")
        self.conv1.build(input_shape)
        hidden_shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(hidden_shape)
        self.conv2.build(hidden_shape)
        self.bn2.build(hidden_shape)
        self.has_projection = self.strides != 1 or in_channels != self.filters
        if self.has_projection:
            self.shortcut_conv = self._conv(1, self.strides, "shortcut_conv")
            self.shortcut_bn = self._bn("shortcut_bn")
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(hidden_shape)

    def call(self, inputs, training=None):
        """Returns the block output, (batch, H / strides, W / strides, filters)."""
        residual = ops.relu(self.bn1(self.conv1(inputs), training=training))
        residual = self.bn2(self.conv2(residual), training=training)
        shortcut = inputs
        if self.has_projection:
            shortcut = self.shortcut_bn(self.shortcut_conv(inputs), training=training)
        outputs = residual + shortcut
        return ops.relu(outputs) if self.post_activation else outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "post_activation": self.post_activation,
                "zero_init_last_bn": self.zero_init_last_bn,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


@register
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2 bottleneck: 1x1 expand, 3x3 depthwise, linear 1x1 projection, residual.

    The defaults (BN momentum 0.999, epsilon 1e-3, no conv biases) follow
    `keras.applications.MobileNetV2`, so one block has the same parameters as the matching
    `block_<i>_*` layers there.

    Args:
        filters: Output channels of the linear projection.
        expansion: Expansion factor t; the hidden layer has t * c_in channels. With t == 1 the
            expand convolution is skipped (MobileNetV2's first block).
        stride: Stride of the depthwise convolution (1 or 2).
        kernel_size: Size of the depthwise kernel.
        momentum: Moving-average momentum of the BN layers.
        epsilon: BN epsilon.
        kernel_initializer: Initialiser of the convolutions.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        filters,
        expansion=6,
        stride=1,
        kernel_size=3,
        momentum=0.999,
        epsilon=1e-3,
        kernel_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.expansion = expansion
        self.stride = stride
        self.kernel_size = kernel_size
        self.momentum = momentum
        self.epsilon = epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _bn(self, name):
        return layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, name=name, dtype=self.dtype_policy
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        hidden = self.expansion * in_channels
        shape = input_shape
        self.expand_conv = self.expand_bn = None
        if self.expansion != 1:
            self.expand_conv = layers.Conv2D(
                hidden, 1, use_bias=False, kernel_initializer=self.kernel_initializer,
                name="expand", dtype=self.dtype_policy,
            )
            self.expand_bn = self._bn("expand_bn")
            self.expand_conv.build(shape)
            shape = self.expand_conv.compute_output_shape(shape)
            self.expand_bn.build(shape)
        self.depthwise_conv = layers.DepthwiseConv2D(
            self.kernel_size, strides=self.stride, padding="same", use_bias=False,
            depthwise_initializer=self.kernel_initializer, name="depthwise",
            dtype=self.dtype_policy,
        )
        self.depthwise_bn = self._bn("depthwise_bn")
        self.depthwise_conv.build(shape)
        shape = self.depthwise_conv.compute_output_shape(shape)
        self.depthwise_bn.build(shape)
        self.project_conv = layers.Conv2D(
            self.filters, 1, use_bias=False, kernel_initializer=self.kernel_initializer,
            name="project", dtype=self.dtype_policy,
        )
        self.project_bn = self._bn("project_bn")
        self.project_conv.build(shape)
        self.project_bn.build(self.project_conv.compute_output_shape(shape))
        self.has_residual = self.stride == 1 and in_channels == self.filters

    def call(self, inputs, training=None):
        """Returns the block output, (batch, H / stride, W / stride, filters)."""
        x = inputs
        if self.expand_conv is not None:
            x = ops.relu6(self.expand_bn(self.expand_conv(x), training=training))
        x = ops.relu6(self.depthwise_bn(self.depthwise_conv(x), training=training))
        # Linear bottleneck: a ReLU here would destroy information in the narrow projection.
        x = self.project_bn(self.project_conv(x), training=training)
        return inputs + x if self.has_residual else x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "expansion": self.expansion,
                "stride": self.stride,
                "kernel_size": self.kernel_size,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
