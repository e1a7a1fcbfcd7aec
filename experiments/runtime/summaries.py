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
    clean = {k: v if isinstance(v, (bool, int, float, str)) else ",".join(map(str, v))
             if isinstance(v, (list, tuple)) else str(v)
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


def write_session(log_dir, hparams, group, metrics):
    """Writes one HParams session (a sweep's sub-run) into `log_dir`.

    Args:
        log_dir: The sub-run's directory (its own TensorBoard run).
        hparams: The swept values of its configuration.
        group: The session group: sub-runs of one configuration (several seeds) share it, so
            the HParams table shows one row per configuration, aggregated over seeds.
        metrics: Final numbers `name -> float`, written as scalars the sessions report.
    """
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=0):
        hparams_api.hparams(hparams, trial_id=group)
        for name, value in metrics.items():
            tf.summary.scalar(name, value)
    writer.flush()
    writer.close()


def write_hparams_config(writer, values, metric_names):
    """Writes the HParams experiment summary (hparams with their values, metric tags)."""
    def domain(options):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in options):
            options = [float(v) for v in options]  # Discrete needs one type: 0 and 0.5 mix
        return hparams_api.Discrete(sorted(options, key=lambda v: (str(type(v)), v)))

    with writer.as_default(step=0):
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam(name, domain(options))
                     for name, options in values.items()],
            metrics=[hparams_api.Metric(name) for name in metric_names])
    writer.flush()
