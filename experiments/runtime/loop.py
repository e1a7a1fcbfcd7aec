"""The one training loop the experiments share, correct under every strategy.

Keras 3.15 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
the suite drives `strategy.run` itself and keeps Keras callbacks working through a
`CallbackList`. Per step and replica: per-example losses summed and divided by the *global*
batch size (`tf.nn.compute_average_loss`), regularisation losses divided by the replica count,
gradients summed across replicas by the optimizer. Metrics see the gathered predictions of all
replicas, so they equal a one-device run's. Checkpoints at each epoch end make a rerun resume;
a non-finite loss stops the run and records the step.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from experiments.runtime import files
from experiments.runtime import inputs
from experiments.runtime import summaries

HISTORY_FILE = "history.json"


@dataclasses.dataclass
class TrainResult:
    """What a finished (or stopped) training run reports.

    Attributes:
        status: "completed", "diverged" or "stopped" (a callback set `stop_training`).
        epochs_completed: Epochs with a checkpoint, including those of earlier attempts.
        steps: Global optimizer steps taken.
        diverged_at_step: The step whose loss was NaN/Inf, or None.
        history: One dict per completed epoch: {"epoch", "train": {...}, "validation": {...}}.
        seconds: Wall time of this attempt's training.
        examples_per_second: Training throughput of this attempt.
        resumed_from_epoch: Epochs restored from a checkpoint at start.
    """

    status: str
    epochs_completed: int
    steps: int
    diverged_at_step: int | None
    history: list
    seconds: float
    examples_per_second: float
    resumed_from_epoch: int

    def final(self, split="validation"):
        """The last epoch's metrics for `split` ("train" or "validation")."""
        return self.history[-1].get(split, {}) if self.history else {}


def weights_digest(model):
    """SHA-256 of the model's weights: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


class Trainer:
    """Trains a Keras model with `strategy.run`, writing summaries and checkpoints.

    Args:
        strategy: The `tf.distribute.Strategy` to run under.
        model_fn: Zero-argument callable returning a built Keras model (called in scope).
        optimizer_fn: Zero-argument callable returning a Keras optimizer (called in scope).
        loss_fn: `(y_true, y_pred) -> per-example losses` of shape (batch,), e.g. a Keras
            loss with `reduction=None`.
        global_batch_size: The global batch size of the training data.
        model_dir: Where train/ and validation/ events and checkpoints/ go; None for none.
        metrics_fn: Zero-argument callable returning Keras metrics `(y_true, y_pred)`.
        callbacks: Keras callbacks, driven through a `CallbackList`.
        clip_norm: Global-norm gradient clipping, computed on the cross-replica sum.
        jit_compile: XLA-compile the forward/backward pass of each replica.
        log_every_steps: Scalars and progress are written every this many steps.
        verbose: 0 silent, 1 a progress bar on a terminal or one line per epoch otherwise.
        is_chief: Whether this worker writes summaries (non-chief workers stay quiet).
        max_checkpoints: Checkpoints kept in `model_dir/checkpoints`.
    """

    def __init__(self, strategy, model_fn, optimizer_fn, loss_fn, global_batch_size,
                 model_dir=None, metrics_fn=None, callbacks=(), clip_norm=None,
                 jit_compile=False, log_every_steps=50, verbose=1, is_chief=True,
                 max_checkpoints=2):
        self.strategy = strategy
        self.loss_fn = loss_fn
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.clip_norm = clip_norm
        self.log_every_steps = log_every_steps
        self.verbose = verbose
        self.is_chief = is_chief
        inputs.check_batch_size(global_batch_size, strategy.num_replicas_in_sync)

        with strategy.scope():
            self.model = model_fn()
            self.optimizer = optimizer_fn()
            self.optimizer.build(self.model.trainable_variables)
            # compile() only attaches the optimizer, so callbacks find `model.optimizer`.
            self.model.compile(optimizer=self.optimizer, jit_compile=False)
        # Metrics live outside the scope: they are updated in cross-replica context from
        # gathered predictions, once per global batch.
        self.metrics = list(metrics_fn()) if metrics_fn else []
        self.callbacks = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=self.model
        )
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch
        )
        self._manager = None
        self._writers = None
        if model_dir:
            self._manager = tf.train.CheckpointManager(
                self._checkpoint, os.path.join(model_dir, "checkpoints"),
                max_to_keep=max_checkpoints,
            )
            if is_chief:
                self._writers = summaries.Writers(model_dir)

        self._grads = tf.function(self._loss_and_grads, jit_compile=True) if jit_compile \
            else self._loss_and_grads
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step)

    # ----------------------------------------------------------------- replica functions
    def _loss_and_grads(self, x, y):
        with tf.GradientTape() as tape:
            pred = self.model(x, training=True)
            per_example = tf.cast(self.loss_fn(y, pred), tf.float32)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.global_batch_size
            )
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses])
                )
        grads = tape.gradient(loss, self.model.trainable_variables)
        return loss, grads, pred

    def _replica_train_step(self, x, y):
        loss, grads, pred = self._grads(x, y)
        if self.clip_norm:
            grads = self._clip_global_norm(grads)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        # The metrics' gathers are collectives too: launch them only after this replica's
        # all-reduces, so every replica issues its collectives in the same order.
        with tf.control_dependencies([self.optimizer.iterations]):
            return tf.identity(loss), tf.identity(pred), tf.identity(y)

    def _clip_global_norm(self, grads):
        # Keras' optimizer clips each replica's gradient before its all-reduce; the norm that
        # matters is that of the summed gradient, so scale every replica's share by one factor.
        ctx = tf.distribute.get_replica_context()
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(total)
        scale = tf.minimum(1.0, self.clip_norm / tf.maximum(norm, 1e-12))
        return [g * tf.cast(scale, g.dtype) for g in grads]

    def _replica_eval_step(self, x, y):
        pred = self.model(x, training=False)
        per_example = tf.cast(self.loss_fn(y, pred), tf.float32)
        return tf.reduce_sum(per_example), tf.cast(tf.shape(per_example)[0], tf.float32), pred, y

    # --------------------------------------------------------------- global functions
    def _update_metrics(self, pred, y):
        pred = self.strategy.gather(pred, axis=0)
        y = self.strategy.gather(y, axis=0)
        for metric in self.metrics:
            metric.update_state(y, pred)

    def _distributed_train_step(self, iterator):
        x, y = next(iterator)
        loss, pred, y = self.strategy.run(self._replica_train_step, args=(x, y))
        self._update_metrics(pred, y)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    def _distributed_eval_step(self, iterator):
        x, y = next(iterator)
        loss_sum, count, pred, y = self.strategy.run(self._replica_eval_step, args=(x, y))
        self._update_metrics(pred, y)
        reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
        return reduce(loss_sum), reduce(count)

    # ------------------------------------------------------------------------ public
    def restore(self):
        """Restores the latest checkpoint, if any. Returns the epochs it had completed."""
        if self._manager is None or self._manager.latest_checkpoint is None:
            return 0
        self._checkpoint.restore(self._manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.epoch.numpy())

    def evaluate(self, make_dataset):
        """Loss and metrics over a dataset of global batches (a partial last batch is fine).

        Args:
            make_dataset: Zero-argument callable returning a dataset of global batches.

        Returns:
            Dict with "loss" and each metric's result, as Python floats.
        """
        for metric in self.metrics:
            metric.reset_state()
        loss_sum, count = 0.0, 0.0
        dataset = make_dataset()
        steps = int(dataset.cardinality())
        iterator = iter(inputs.distribute(self.strategy, lambda: dataset, self.global_batch_size))
        for _ in range(steps):
            batch_loss, batch_count = self._eval_step(iterator)
            loss_sum += float(batch_loss)
            count += float(batch_count)
        results = {"loss": loss_sum / max(count, 1.0)}
        results.update({m.name: float(m.result()) for m in self.metrics})
        return results

    def fit(self, train_data, epochs, validation_data=None):
        """Trains to `epochs`, resuming from the latest checkpoint in `model_dir`.

        Args:
            train_data: `epoch -> dataset of global batches` (the order may depend on epoch).
            epochs: Total epochs (a resumed run trains only the missing ones).
            validation_data: Zero-argument callable returning a dataset of global batches.

        Returns:
            A `TrainResult`.
        """
        start_epoch = self.restore()
        history = self._load_history(start_epoch)
        steps_per_epoch = int(train_data(0).cardinality())
        if steps_per_epoch <= 0:
            raise ValueError("the training set is smaller than one global batch")
        self.model.stop_training = False
        self.callbacks.set_params({"epochs": epochs, "steps": steps_per_epoch, "verbose": 0})
        status, diverged_at = "completed", None
        trained_examples, t_start = 0, time.perf_counter()

        self.callbacks.on_train_begin()
        for epoch in range(start_epoch, epochs):
            self.callbacks.on_epoch_begin(epoch)
            for metric in self.metrics:
                metric.reset_state()
            iterator = iter(inputs.distribute(
                self.strategy, lambda e=epoch: train_data(e), self.global_batch_size))
            progbar = self._progbar(steps_per_epoch)
            epoch_start, loss_total, window_start = time.perf_counter(), 0.0, time.perf_counter()
            for step in range(steps_per_epoch):
                self.callbacks.on_train_batch_begin(step)
                loss = float(self._train_step(iterator))
                global_step = int(self.optimizer.iterations.numpy())
                if not math.isfinite(loss):
                    status, diverged_at = "diverged", global_step
                    self._say(f"diverged: loss is {loss} at step {global_step}; stopping")
                    break
                loss_total += loss
                logs = {"loss": loss}
                self.callbacks.on_train_batch_end(step, logs)
                if progbar is not None:
                    progbar.update(step + 1, [("loss", loss)])
                if self._writers and global_step % self.log_every_steps == 0:
                    now = time.perf_counter()
                    rate = self.log_every_steps / max(now - window_start, 1e-9)
                    window_start = now
                    self._writers.train_scalars(global_step, {
                        "loss": loss, **self._metric_values(),
                        "learning_rate": self._learning_rate(),
                        "steps_per_second": rate,
                        "examples_per_second": rate * self.global_batch_size,
                    })
                if self.model.stop_training:
                    break
            if status == "diverged":
                break
            done_steps = step + 1
            trained_examples += done_steps * self.global_batch_size
            epoch_seconds = time.perf_counter() - epoch_start
            train_logs = {"loss": loss_total / done_steps, **self._metric_values()}
            record = {"epoch": epoch + 1, "train": train_logs}
            logs = dict(train_logs)
            if validation_data is not None:
                record["validation"] = self.evaluate(validation_data)
                logs.update({f"val_{k}": v for k, v in record["validation"].items()})
            global_step = int(self.optimizer.iterations.numpy())
            if self._writers:
                self._writers.epoch_end(global_step, train_logs, record.get("validation"),
                                        self._learning_rate())
            history.append(record)
            self.epoch.assign(epoch + 1)
            self._save(history)
            self._say(self._epoch_line(epoch + 1, epochs, logs, epoch_seconds, done_steps))
            self.callbacks.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                status = "stopped"
                break
        self.callbacks.on_train_end()
        if self._writers:
            self._writers.flush()
        seconds = time.perf_counter() - t_start
        return TrainResult(
            status=status,
            epochs_completed=int(self.epoch.numpy()),
            steps=int(self.optimizer.iterations.numpy()),
            diverged_at_step=diverged_at,
            history=history,
            seconds=seconds,
            examples_per_second=trained_examples / seconds if seconds > 0 else 0.0,
            resumed_from_epoch=start_epoch,
        )

    # ----------------------------------------------------------------------- helpers
    def _metric_values(self):
        return {m.name: float(m.result()) for m in self.metrics}

    def _learning_rate(self):
        lr = self.optimizer.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def _load_history(self, start_epoch):
        if not self.model_dir or start_epoch == 0:
            return []
        path = os.path.join(self.model_dir, HISTORY_FILE)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return json.load(f)[:start_epoch]

    def _save(self, history):
        if self._manager is None:
            return
        # History first: a kill between the two leaves history one epoch ahead, which the
        # next restore trims to the checkpoint's epoch.
        if self.is_chief:
            files.write_json(os.path.join(self.model_dir, HISTORY_FILE), history)
        self._manager.save(checkpoint_number=int(self.epoch.numpy()))

    def _progbar(self, steps):
        if self.verbose and self.is_chief and sys.stdout.isatty():
            return keras.utils.Progbar(steps, stateful_metrics=["loss"])
        return None

    def _epoch_line(self, epoch, epochs, logs, seconds, steps):
        parts = [f"epoch {epoch}/{epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items()]
        parts.append(f"{seconds:.1f}s ({steps * self.global_batch_size / max(seconds, 1e-9):.0f} ex/s)")
        return " - ".join(parts)

    def _say(self, line):
        if self.verbose and self.is_chief:
            print(line, flush=True)
