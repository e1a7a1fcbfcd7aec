"""A callback that records the optimizer's learning rate, constant or scheduled.

With a schedule eta(t) (a `keras.optimizers.schedules.LearningRateSchedule`), the update with
index t (0-based) uses eta(t), and after it `optimizer.iterations == t + 1`. The value
recorded at global step s is therefore

    learning_rate(s) = eta(s),    s = optimizer.iterations

i.e. the rate the *next* update will use (the same convention as Keras' TensorBoard callback).
A float learning rate is recorded as is.
"""

import keras
import numpy as np
import tensorflow as tf


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """Returns the learning rate `optimizer` will use for its next update.

    Args:
        optimizer: A Keras optimizer with a float, variable or schedule learning rate.

    Returns:
        The learning rate as a Python float: `schedule(optimizer.iterations)` for a
        `LearningRateSchedule`, the value itself otherwise.
    """
    # Keras 3 evaluates a schedule at `iterations` inside the `learning_rate` property.
    return float(np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate)))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to the epoch logs and optionally writes it to TensorBoard.

    The epoch logs entry makes the rate appear in `History` and `CSVLogger` (put this callback
    before them in the list). With `log_dir`, the scalar `learning_rate` is written against the
    global step (`model.optimizer.iterations`) at train begin, at every epoch end and, with
    `every_n_steps`, whenever the step crosses a multiple of it. Works from `model.fit` and from
    a custom loop driving `keras.callbacks.CallbackList`.

    Args:
        log_dir: Directory for this callback's own summary writer; None logs to `logs` only.
        every_n_steps: Also write the scalar every this many optimizer steps; None: only per
            epoch.
    """

    def __init__(self, log_dir: str | None = None, every_n_steps: int | None = None):
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}.")
        self.log_dir = None if log_dir is None else str(log_dir)
        self.every_n_steps = every_n_steps
        self._writer = None
        self._last_written_step = None

    def _optimizer(self) -> keras.optimizers.Optimizer:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                "LearningRateLogger needs model.optimizer; compile the model (or set its "
                "optimizer) before training."
            )
        return optimizer

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self._optimizer().iterations))

    def _write(self, step: int, value: float) -> None:
        if self.log_dir is None or step == self._last_written_step:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.scalar("learning_rate", value, step=step)
        self._last_written_step = step

    def on_train_begin(self, logs=None):
        self._write(self._step(), current_learning_rate(self._optimizer()))

    def on_train_batch_end(self, batch, logs=None):
        if self.log_dir is None or self.every_n_steps is None:
            return
        step = self._step()
        last = self._last_written_step
        # "Crossed a multiple": with steps_per_execution > 1 not every step is seen.
        if last is None or step // self.every_n_steps > last // self.every_n_steps:
            self._write(step, current_learning_rate(self._optimizer()))

    def on_epoch_end(self, epoch, logs=None):
        value = current_learning_rate(self._optimizer())
        if logs is not None:
            logs["learning_rate"] = value
        self._write(self._step(), value)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
