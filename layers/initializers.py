"""Weight initializers from the variance-preserving argument, with the activation gain table.

A layer keeps the variance of its signal roughly constant from input to output when each
weight has variance proportional to 1/fan. The gain rescales that variance for the
non-linearity that follows (values from PyTorch's `torch.nn.init.calculate_gain`):

    activation  linear  sigmoid  tanh  relu     leaky_relu(slope)         selu
    gain        1       1        5/3   sqrt(2)  sqrt(2 / (1 + slope^2))   3/4

Implemented distributions (fan_in, fan_out computed like Keras: a Dense kernel is
(fan_in, fan_out); a convolution kernel multiplies the channels by the receptive field):

    XavierUniform:  W ~ U[-a, a],  a = gain * sqrt(6 / (fan_in + fan_out))
    XavierNormal:   W ~ N(0, std^2),  std = gain * sqrt(2 / (fan_in + fan_out))
    HeNormal:       W ~ N(0, gain^2 / fan_in)           (plain normal, gain sqrt(2) for ReLU)
    NaiveUniform:   W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)]  (the pre-Glorot baseline)

Note: `HeNormal` here samples a plain normal, as in He et al. (2015); Keras' own
`keras.initializers.HeNormal` samples a truncated normal with a corrected stddev.
"""

import math
import random as python_random

import keras

from layers.registration import register

Zeros = keras.initializers.Zeros

_GAINS = {
    "linear": lambda slope: 1.0,
    "sigmoid": lambda slope: 1.0,
    "tanh": lambda slope: 5.0 / 3.0,
    "relu": lambda slope: math.sqrt(2.0),
    "leaky_relu": lambda slope: math.sqrt(2.0 / (1.0 + slope**2)),
    "selu": lambda slope: 3.0 / 4.0,
}

INITIALIZER_NAMES = ("zeros", "naive", "xavier", "xavier_gain", "he")


def gain(activation: str, negative_slope: float = 0.01) -> float:
    """Returns the recommended initialization gain for an activation.

    Args:
        activation: One of "linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu".
        negative_slope: The slope of leaky ReLU for negative inputs (used only for
            "leaky_relu").

    Returns:
        The gain as a Python float.

    Raises:
        ValueError: If `activation` is not in the table.
    """
    if activation not in _GAINS:
        raise ValueError(
            f"Unknown activation {activation!r} for gain(); valid names: {', '.join(_GAINS)}."
        )
    return _GAINS[activation](float(negative_slope))


def compute_fans(shape):
    """Returns (fan_in, fan_out) for a weight shape, following Keras' convention.

    Args:
        shape: The weight shape. A 1-D shape has fan_in = fan_out = shape[0]; a 2-D shape is
            (fan_in, fan_out); a longer shape is a convolution kernel
            (*receptive_field, in_channels, out_channels).

    Returns:
        A tuple of Python ints `(fan_in, fan_out)`.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


class _SeededInitializer(keras.initializers.Initializer):
    """Shared seed handling: an int seed is deterministic, None draws one like Keras does.

    As with Keras' own random initializers, an unseeded instance draws its seed once (from
    Python's `random`, which `keras.utils.set_random_seed` seeds), so repeated calls on the
    same instance return the same values.
    """

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self._init_seed = seed
        self.seed = seed if seed is not None else python_random.randint(1, int(1e9))

    def get_config(self):
        return {"seed": self._init_seed}


@register
class XavierUniform(_SeededInitializer):
    """Glorot/Xavier uniform: U[-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)).

    Args:
        gain: Multiplier for the bound, e.g. `gain("tanh")`.
        seed: An int for deterministic values, or None.
    """

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed=seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = compute_fans(shape)
        limit = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return keras.random.uniform(
            shape, minval=-limit, maxval=limit, dtype=dtype, seed=self.seed
        )

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


@register
class XavierNormal(_SeededInitializer):
    """Glorot/Xavier normal (not truncated): N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)).

    Args:
        gain: Multiplier for the standard deviation, e.g. `gain("tanh")`.
        seed: An int for deterministic values, or None.
    """

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed=seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = compute_fans(shape)
        stddev = self.gain * math.sqrt(2.0 / (fan_in + fan_out))
        return keras.random.normal(shape, stddev=stddev, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


@register
class HeNormal(_SeededInitializer):
    """He/Kaiming normal (not truncated): N(0, gain^2 / fan_in).

    Args:
        gain: Multiplier for the standard deviation; sqrt(2) suits ReLU.
        seed: An int for deterministic values, or None.
    """

    def __init__(self, gain=math.sqrt(2.0), seed=None):
        super().__init__(seed=seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        fan_in, _ = compute_fans(shape)
        stddev = self.gain / math.sqrt(fan_in)
        return keras.random.normal(shape, stddev=stddev, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


@register
class NaiveUniform(_SeededInitializer):
    """The pre-Glorot heuristic U[-1/sqrt(fan_in), 1/sqrt(fan_in)], kept as a baseline.

    Its variance is 1/(3 fan_in), a third of what keeps a linear layer's variance constant,
    so deep stacks initialised with it shrink their activations layer after layer.

    Args:
        seed: An int for deterministic values, or None.
    """

    def __call__(self, shape, dtype=None):
        fan_in, _ = compute_fans(shape)
        limit = 1.0 / math.sqrt(fan_in)
        return keras.random.uniform(
            shape, minval=-limit, maxval=limit, dtype=dtype, seed=self.seed
        )


def get_initializer(name: str, activation: str, seed=None) -> keras.initializers.Initializer:
    """Returns a kernel initializer by the short names experiments sweep over.

    Args:
        name: "zeros", "naive" (NaiveUniform), "xavier" (XavierUniform, gain 1),
            "xavier_gain" (XavierUniform with `gain(activation)`) or "he" (HeNormal with
            `gain(activation)`).
        activation: The activation following the layer; sets the gain for "xavier_gain"
            and "he" and is validated for every name.
        seed: An int for deterministic values, or None.

    Returns:
        A Keras initializer instance.

    Raises:
        ValueError: If `name` or `activation` is unknown.
    """
    activation_gain = gain(activation)
    if name == "zeros":
        return Zeros()
    if name == "naive":
        return NaiveUniform(seed=seed)
    if name == "xavier":
        return XavierUniform(gain=1.0, seed=seed)
    if name == "xavier_gain":
        return XavierUniform(gain=activation_gain, seed=seed)
    if name == "he":
        return HeNormal(gain=activation_gain, seed=seed)
    raise ValueError(
        f"Unknown initializer name {name!r}; valid names: {', '.join(INITIALIZER_NAMES)}."
    )
