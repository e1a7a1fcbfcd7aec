"""Linear warmup followed by cosine decay (Goyal et al., 2017; Loshchilov & Hutter, 2017).

With peak rate ``eta``, warmup length ``T_w``, total length ``T`` and final rate ``eta_min``::

    lr(t) = eta * t / T_w                                                     t <  T_w
    lr(t) = eta_min + (eta - eta_min) * 0.5 * (1 + cos(pi * (t - T_w) / (T - T_w)))
                                                                              T_w <= t < T
    lr(t) = eta_min                                                           t >= T

The notes' cosine decays to 0; this is the same curve with ``final_lr=0`` (the default), and
with ``final_lr > 0`` it is shifted and rescaled to end at ``final_lr`` (SGDR's ``eta_min``).
``t`` is the optimizer's ``iterations`` (0 on the first update), so with ``warmup_steps > 0``
the very first update uses ``lr = 0``; ``warmup_steps=0`` starts directly at the peak.
"""

import math

import keras
from keras import ops

from layers.registration import register


@register
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_lr`, then cosine decay to `final_lr` at `total_steps`.

    Args:
        peak_lr: Positive float. The rate reached at the end of warmup.
        warmup_steps: Non-negative int. Steps of linear warmup (0 disables warmup).
        total_steps: Int greater than `warmup_steps`. The step at which `final_lr` is reached
            and held.
        final_lr: Float in `[0, peak_lr]`. The rate at and after `total_steps`.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(self, peak_lr, warmup_steps, total_steps, final_lr=0.0):
        if not peak_lr > 0.0:
            raise ValueError(f"`peak_lr` must be positive, got {peak_lr!r}.")
        for arg_name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"`{arg_name}` must be an integer, got {value!r}.")
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps!r}.")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"`total_steps` ({total_steps}) must be greater than `warmup_steps` "
                f"({warmup_steps})."
            )
        if not 0.0 <= final_lr <= peak_lr:
            raise ValueError(f"`final_lr` must be in [0, peak_lr={peak_lr}], got {final_lr!r}.")
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.final_lr = float(final_lr)

    def __call__(self, step):
        """Returns the learning rate (float32 scalar) at `step`.

        Args:
            step: Scalar int or float (tensor), the number of updates applied so far.

        Returns:
            The learning rate as a float32 scalar tensor.
        """
        t = ops.cast(step, "float32")
        # max(.,1) only guards the unused branch of the `where` when warmup_steps == 0.
        warmup = self.peak_lr * t / max(self.warmup_steps, 1)
        progress = ops.clip((t - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0, 1)
        cosine = self.final_lr + (self.peak_lr - self.final_lr) * 0.5 * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(t < self.warmup_steps, warmup, cosine)

    def get_config(self):
        """Returns the constructor arguments."""
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "final_lr": self.final_lr,
        }
