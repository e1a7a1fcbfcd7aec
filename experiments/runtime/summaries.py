"""TensorBoard writers: `train/` and `validation/` like orbit, plus run-level text and hparams."""

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api


class Writers:
    """The `train/` and `validation/` summary writers of one training run.

    Args:
        model_dir: The run directory; events go to `model_dir/train` and `model_dir/validation`.
    """

    def __init__(self, model_dir):
        self.train = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
        self.validation = tf.summary.create_file_writer(os.path.join(model_dir, "validation"))

    def train_scalars(self, step, values):
        """Writes each `name: value` scalar to `train/` at `step`."""
        with self.train.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def epoch_end(self, step, train_logs, validation_logs, learning_rate):
        """Writes epoch-level metrics; the validation curves share names with train's."""
        with self.train.as_default(step=step):
            for name, value in train_logs.items():
                tf.summary.scalar(f"epoch_{name}", value)
            tf.summary.scalar("learning_rate", learning_rate)
        if validation_logs:
            with self.validation.as_default(step=step):
                for name, value in validation_logs.items():
                    tf.summary.scalar(f"epoch_{name}", value)

    def flush(self):
        self.train.flush()
        self.validation.flush()


def write_run_text(writer, texts, step=0):
    """Writes markdown texts (config, claims) with the run-level `writer`."""
    with writer.as_default(step=step):
        for name, markdown in texts.items():
            tf.summary.text(name, markdown)
    writer.flush()


def write_hparams(writer, hparams, metrics=None):
    """Records the run's hyper-parameters (and final metrics) for TensorBoard's HParams tab.

    Args:
        writer: The run-level summary writer.
        hparams: Flag values; non-scalar values are stringified.
        metrics: Optional final metrics `name -> float`, written as scalars next to them.
    """
    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
             for k, v in hparams.items() if v is not None}
    with writer.as_default(step=0):
        hparams_api.hparams(clean)
        for name, value in (metrics or {}).items():
            tf.summary.scalar(name, value)
    writer.flush()


def write_image(writer, tag, image, step=0):
    """Writes a (1, H, W, C) uint8 image with `writer`."""
    with writer.as_default(step=step):
        tf.summary.image(tag, image)
    writer.flush()
