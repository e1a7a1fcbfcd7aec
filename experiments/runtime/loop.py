"""The one training loop the experiments share, correct under every strategy.

Keras 3.15 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
the suite drives `strategy.run` itself and keeps Keras callbacks working through a
`CallbackList`. What a topic trains is a `Task` (experiments/runtime/task.py): batches of any
structure and a loss `(loss_sum, weight)` per replica. Per step and replica the optimised
loss is `loss_sum / all_reduce(weight) + sum(model.losses) / replicas`, so the optimizer's
cross-replica gradient sum is the gradient of the global-batch mean, exactly. Metrics are
updated per replica into sum-on-read variables: no predictions are gathered.

`steps_per_execution` runs several steps inside one `tf.function` (a `tf.while_loop` over the
iterator; with `jit_update` on one replica, the steps themselves run as one XLA loop over the
stacked batches); checkpoints are written at epoch ends (after the callbacks' `on_epoch_end`)
and every `checkpoint_every_steps`, with the position in the epoch and the callbacks' state
(`callback_state.py`: early stopping's patience and best weights, a topic's curves), so a
killed run resumes on the very next batch and goes on as the uninterrupted run would; a
non-finite loss stops the run and records the step.

`parallel_copies` trains sparse models (word2vec) on several CPU cores: TensorFlow holds an XLA
launch's variables for the whole launch, so two threads stepping the same variables take
turns. Instead N threads each step their own copy of the model through one execution, and
the copies' changes are then summed into the model, as gensim's Hogwild threads each add
their updates to the shared vectors (see `Trainer`).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from experiments.runtime import files
from experiments.runtime import inputs
from experiments.runtime import summaries
from experiments.runtime.callback_state import CallbackStates
from experiments.runtime.errors import ConfigError
from experiments.runtime.strategy import worker_info
from optimizers.clipping import clip_by_global_norm_across_replicas

HISTORY_FILE = "history.json"
_SUM = tf.distribute.ReduceOp.SUM


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
        examples_per_second: Training throughput of this attempt (global batches x size).
        resumed_from_epoch: Whole epochs restored from a checkpoint at start.
        resumed_from_step: Global step restored from a checkpoint at start.
    """

    status: str
    epochs_completed: int
    steps: int
    diverged_at_step: int | None
    history: list
    seconds: float
    examples_per_second: float
    resumed_from_epoch: int
    resumed_from_step: int = 0

    def final(self, split="validation"):
        """The last epoch's metrics for `split` ("train" or "validation")."""
        return self.history[-1].get(split, {}) if self.history else {}


def weights_digest(model):
    """SHA-256 of the model's weights: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def _scale(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * tf.cast(factor, gradient.values.dtype),
                                gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def _add(a, b):
    if a is None or b is None:
        return b if a is None else a
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


class _EpochTotals:
    """Running sums of one epoch, in Python; mirrored into a variable only for checkpoints,
    so a mid-epoch checkpoint resumes the epoch's loss exactly."""

    def __init__(self):
        self.values = np.zeros(4)  # loss_sum, weight, regularisation sum, steps
        self.variable = tf.Variable(np.zeros(4), dtype=tf.float64, trainable=False)

    def reset(self):
        self.values = np.zeros(4)

    def add(self, loss_sum, weight, regularization, steps):
        self.values += (loss_sum, weight, regularization, steps)

    def before_save(self):
        self.variable.assign(self.values)

    def after_restore(self):
        self.values = self.variable.numpy().copy()

    def logs(self):
        loss_sum, weight, regularization, steps = self.values
        return {"loss": float(loss_sum / max(weight, 1e-12)),
                "regularization_loss": float(regularization / max(steps, 1))}


class _ModelCopy(typing.NamedTuple):
    """A model with its optimizer and metrics: the trainer's own, or a copy that a thread
    steps through one execution of a round (`parallel_copies`)."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    metrics: list
    train_steps: object  # a copy's XLA loop, `Trainer._local_train_steps` bound to it


class Trainer:
    """Trains a `Task` with `strategy.run`, writing summaries and checkpoints.

    Args:
        strategy: The `tf.distribute.Strategy` to run under.
        task: A `Task` (model, optimizer, metrics and the loss over a batch).
        global_batch_size: The global batch size of the training data.
        model_dir: Where train/ and validation/ events and checkpoints/ go; None for none.
        callbacks: Keras callbacks, driven through a `CallbackList`.
        clip_norm: Global-norm gradient clipping, computed on the cross-replica sum.
        jit_compile: XLA-compile the forward/backward pass of each replica.
        jit_update: With `jit_compile` and one replica, compile the optimizer update into
            the same XLA computation as the forward/backward (the whole replica step). Sparse
            steps (embedding rows, word2vec) gain most: the gradient rows are scaled and
            scattered into the weights inside XLA instead of by TensorFlow's CPU scatter
            kernels. With several replicas the weight's all-reduce cannot live in XLA, so
            this falls back to compiling the forward/backward only. With
            `steps_per_execution` > 1 and batches of one static shape, an execution's batches
            are stacked and all its steps (metrics updates included) run as one XLA loop: one
            launch per execution instead of one per step, which halves a small step's cost.
            When no checkpoint boundary cuts an execution short, tf.data does the stacking in
            its background thread (`_stack_executions`), off the training thread.
        steps_per_execution: Training steps run inside one `tf.function` call.
        parallel_copies: With `jit_update` on one replica, train in rounds of this many
            executions, one per thread, each stepping its own copy of the model from the
            same starting weights; after a round the model is its weights plus the sum of
            the copies' changes (each copy's `count` steps take the learning rate at their
            own place in the schedule). For sparse updates on a multi-core CPU, where one
            XLA launch runs on one core: word2vec's rows rarely collide within a round, so
            this is the Hogwild training gensim's threads do, made deterministic. Needs
            tf.data's stacking (no checkpoint boundary inside an execution; otherwise one
            thread trains), a model without non-trainable variables and an optimizer
            without slots (plain SGD): summed changes of a moment estimate or a moving
            mean mean nothing. Metrics' sums and counts add up the same way.
        checkpoint_every_steps: Also checkpoint every this many global steps (mid-epoch).
        log_every_steps: Scalars and progress are written every this many steps.
        verbose: 0 silent, 1 a progress bar on a terminal or one line per epoch otherwise.
        is_chief: Whether this worker writes summaries (non-chief workers stay quiet).
        max_checkpoints: Checkpoints kept in `model_dir/checkpoints`.
    """

    def __init__(self, strategy, task, global_batch_size, *, model_dir=None, callbacks=(),
                 clip_norm=None, jit_compile=False, jit_update=False, steps_per_execution=1,
                 parallel_copies=1, checkpoint_every_steps=None, log_every_steps=50,
                 verbose=1, is_chief=True, max_checkpoints=2):
        self.strategy = strategy
        self.task = task
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.clip_norm = clip_norm
        self.steps_per_execution = int(steps_per_execution)
        self.checkpoint_every_steps = checkpoint_every_steps
        self.log_every_steps = log_every_steps
        self.verbose = verbose
        self.is_chief = is_chief
        inputs.check_batch_size(global_batch_size, strategy.num_replicas_in_sync)
        if self.steps_per_execution < 1:
            raise ConfigError("--steps_per_execution must be >= 1")
        self.parallel_copies = int(parallel_copies)
        if self.parallel_copies < 1:
            raise ConfigError("--parallel_copies must be >= 1")

        with strategy.scope():
            self.model = task.build_model()
            self.optimizer = task.build_optimizer()
            self.optimizer.build(self.model.trainable_variables)
            # compile() only attaches the optimizer, so callbacks find `model.optimizer`.
            self.model.compile(optimizer=self.optimizer, jit_compile=False)
            # Created in scope: sum-on-read variables, updated per replica.
            self.metrics = list(task.build_metrics())
        self._own = _ModelCopy(self.model, self.optimizer, self.metrics, None)
        self.callbacks = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=False, model=self.model
        )
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self._totals = _EpochTotals()
        self._callback_states = CallbackStates(self.callbacks.callbacks, self.model)
        trained_state = dict(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, epoch_totals=self._totals.variable,
            metrics=[v for m in self.metrics for v in m.variables],
            seed_generators=_seed_generator_states(self.model),
        )
        self._checkpoint = tf.train.Checkpoint(**trained_state,
                                               callback_states=self._callback_states)
        # Checkpoints written before callback states were saved restore without them.
        self._checkpoint_without_callbacks = tf.train.Checkpoint(**trained_state)
        self._manager = None
        self._writers = None
        if model_dir:
            self._manager = tf.train.CheckpointManager(
                self._checkpoint, os.path.join(model_dir, "checkpoints"),
                max_to_keep=max_checkpoints,
            )
            if is_chief:
                self._writers = summaries.Writers(model_dir)

        self._jit_forward_backward = (tf.function(self._loss_and_grads, jit_compile=True)
                                      if jit_compile else None)
        self._jit_local_step = (tf.function(self._local_train_step, jit_compile=True)
                                if jit_compile and jit_update
                                and strategy.num_replicas_in_sync == 1 else None)
        self._jit_local_steps = (tf.function(self._local_train_steps, jit_compile=True)
                                 if self._jit_local_step is not None else None)
        self._copies = []
        if self.parallel_copies > 1:
            self._build_copies()
        self._train_execution = tf.function(self._distributed_train_steps)
        self._train_stacked_execution = tf.function(self._stacked_train_steps)
        self._train_prestacked_execution = tf.function(self._prestacked_train_steps)
        self._train_single_step = tf.function(self._distributed_train_step)
        self._eval_execution = tf.function(self._distributed_eval_steps)
        self._write_train_scalars = tf.function(self._train_scalars)

    # ----------------------------------------------------------------- replica functions
    def _task_loss(self, batch, training, model=None):
        out = self.task.compute_loss(self.model if model is None else model, batch, training)
        if len(out) == 2:
            out = (*out, None)
        loss_sum, weight, outputs = out
        return tf.cast(loss_sum, tf.float32), tf.cast(weight, tf.float32), outputs

    def _regularization(self, model=None):
        losses = (self.model if model is None else model).losses
        if not losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(l, tf.float32) for l in losses])

    def _loss_and_grads(self, batch):
        """Forward and backward of one replica, XLA-compiled (`jit_compile`).

        The global weight needs an all-reduce, which XLA cannot hold, so the gradients of
        the summed loss and of the regularisers come back separately, to be scaled after.
        """
        variables = self.model.trainable_variables
        with tf.GradientTape(persistent=bool(self.model.losses)) as tape:
            loss_sum, weight, outputs = self._task_loss(batch, training=True)
            regularization = self._regularization()
        data_grads = tape.gradient(loss_sum, variables)
        reg_grads = (tape.gradient(regularization, variables) if self.model.losses
                     else [None] * len(variables))
        return loss_sum, weight, regularization, outputs, data_grads, reg_grads

    def _local_train_step(self, batch, copy=None):
        """The whole step of a single replica (forward, backward, update), XLA-compiled.

        With one replica the global weight is the local one: no all-reduce is needed, so
        the gradient of loss_sum / weight + regularisation is taken and applied in one XLA
        computation (`jit_update`). `copy`: the `_ModelCopy` to step (default: the model).
        """
        model, optimizer, _, _ = copy or self._own
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            loss_sum, weight, outputs = self._task_loss(batch, training=True, model=model)
            objective = tf.math.divide_no_nan(loss_sum, weight)
            regularization = self._regularization(model)
            if model.losses:
                objective += regularization
        grads = tape.gradient(objective, variables)
        if self.clip_norm:
            grads = clip_by_global_norm_across_replicas(grads, self.clip_norm)
        optimizer.apply_gradients(zip(grads, variables))
        return loss_sum, weight, regularization, outputs

    def _local_train_steps(self, batches, count, copy=None):
        """`_local_train_step` and the metrics update over stacked batches, in one XLA loop.

        Args:
            batches: `steps_per_execution` batches stacked on a new leading (step) axis; only
                the first `count` are real. The stack keeps one shape, so an execution cut
                short (epoch end, checkpoint) reuses the compiled loop instead of compiling
                another (~2 s on a CPU).
            count: int32 scalar, the steps to run.
            copy: The `_ModelCopy` to step (default: the model).

        Returns:
            The vector of `_run_steps`; like it, the loop stops after a non-finite loss.
        """

        def body(i, loss_total, weight_total, reg_total, last_loss, finite):
            batch = tf.nest.map_structure(lambda t: t[i], batches)
            loss_sum, weight, regularization, outputs = self._local_train_step(batch, copy)
            self.task.update_metrics((copy or self._own).metrics, batch, outputs)
            loss = loss_sum / tf.maximum(weight, 1e-12) + regularization
            return (i + 1, loss_total + tf.cast(loss_sum, tf.float64),
                    weight_total + tf.cast(weight, tf.float64),
                    reg_total + tf.cast(regularization, tf.float64), loss,
                    tf.math.is_finite(loss))

        zero = tf.constant(0.0, tf.float64)
        steps, loss_total, weight_total, reg_total, last_loss, finite = tf.while_loop(
            lambda i, *rest: (i < count) & rest[-1], body,
            (tf.constant(0), zero, zero, zero, tf.constant(0.0), tf.constant(True)))
        return tf.stack([loss_total, weight_total, reg_total, tf.cast(steps, tf.float64),
                         tf.cast(last_loss, tf.float64), tf.cast(finite, tf.float64)])

    def _replica_train_step(self, batch):
        if self._jit_local_step is not None:
            loss_sum, weight, regularization, outputs = self._jit_local_step(batch)
            self.task.update_metrics(self.metrics, batch, outputs)
            return loss_sum, weight, regularization
        # The objective is loss_sum / W + reg / N (W the global weight, N the replicas): the
        # optimizer's cross-replica sum of the gradients is then the global-batch gradient.
        ctx = tf.distribute.get_replica_context()
        variables = self.model.trainable_variables
        if self._jit_forward_backward is not None:
            loss_sum, weight, regularization, outputs, data_grads, reg_grads = (
                self._jit_forward_backward(batch))
            inverse_weight = 1.0 / tf.maximum(ctx.all_reduce(_SUM, weight), 1e-12)
            grads = [_add(_scale(g, inverse_weight), _scale(r, 1.0 / ctx.num_replicas_in_sync))
                     for g, r in zip(data_grads, reg_grads)]
        else:
            # The same ops as tf.nn.compute_average_loss and scale_regularization_loss.
            with tf.GradientTape() as tape:
                loss_sum, weight, outputs = self._task_loss(batch, training=True)
                objective = tf.math.divide_no_nan(loss_sum, ctx.all_reduce(_SUM, weight))
                regularization = self._regularization()
                if self.model.losses:
                    objective += tf.nn.scale_regularization_loss(regularization)
            grads = tape.gradient(objective, variables)
        if self.clip_norm:
            grads = clip_by_global_norm_across_replicas(grads, self.clip_norm)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.task.update_metrics(self.metrics, batch, outputs)
        return loss_sum, weight, regularization

    def _replica_eval_step(self, batch):
        loss_sum, weight, outputs = self._task_loss(batch, training=False)
        regularization = self._regularization()
        self.task.update_metrics(self.metrics, batch, outputs)
        return loss_sum, weight, regularization

    # --------------------------------------------------------------- global functions
    def _step(self, replica_fn, batch):
        """One global step: (loss_sum, weight, regularisation, loss) summed over replicas."""
        per_replica = self.strategy.run(replica_fn, args=(batch,))
        loss_sum, weight, regularization = (
            self.strategy.reduce(_SUM, v, axis=None) for v in per_replica)
        regularization = regularization / self.strategy.num_replicas_in_sync
        return loss_sum, weight, regularization, loss_sum / tf.maximum(weight, 1e-12) + regularization

    def _run_steps(self, replica_fn, iterator, max_steps, stop_on_nonfinite):
        """Runs up to `max_steps` steps (fewer if the iterator ends).

        Returns:
            One float64 vector (a single device-to-host copy per execution): the sums of
            loss_sum, weight and regularisation, the steps run, the last step's loss, and
            1.0 if every loss was finite.
        """
        loss_total = tf.constant(0.0, tf.float64)
        weight_total = tf.constant(0.0, tf.float64)
        reg_total = tf.constant(0.0, tf.float64)
        last_loss = tf.constant(0.0, tf.float32)
        steps = tf.constant(0, tf.int64)
        finite = tf.constant(True)
        for _ in tf.range(max_steps):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            loss_sum, weight, regularization, last_loss = self._step(
                replica_fn, batch.get_value())
            loss_total += tf.cast(loss_sum, tf.float64)
            weight_total += tf.cast(weight, tf.float64)
            reg_total += tf.cast(regularization, tf.float64)
            steps += 1
            if stop_on_nonfinite and not tf.math.is_finite(last_loss):
                finite = tf.constant(False)
                break
        return tf.stack([loss_total, weight_total, reg_total, tf.cast(steps, tf.float64),
                         tf.cast(last_loss, tf.float64), tf.cast(finite, tf.float64)])

    def _distributed_train_steps(self, iterator, max_steps):
        return self._run_steps(self._replica_train_step, iterator, max_steps, True)

    def _distributed_train_step(self, iterator):
        # The common case (one step per call, known epoch length) without the while loop
        # and Optional of `_run_steps`: what Keras' own train_function does.
        sums = self._step(self._replica_train_step, next(iterator))
        values = [tf.cast(v, tf.float64) for v in sums]
        return tf.stack([*values[:3], tf.constant(1.0, tf.float64), values[3],
                         tf.cast(tf.math.is_finite(sums[3]), tf.float64)])

    def _stacked_train_steps(self, iterator, max_steps):
        # Up to max_steps batches, stacked, then one XLA loop over them (`jit_update`). The
        # stack always holds steps_per_execution batches (unwritten ones are zeros).
        arrays = tf.nest.map_structure(
            lambda spec: tf.TensorArray(spec.dtype, size=self.steps_per_execution,
                                        element_shape=spec.shape), iterator.element_spec)
        count = tf.constant(0)
        for _ in tf.range(max_steps):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            arrays = tf.nest.map_structure(lambda array, t: array.write(count, t), arrays,
                                           batch.get_value())
            count += 1
        if count == 0:  # the dataset had ended: no XLA launch on an empty stack
            return _no_steps()
        return self._run_stacked(tf.nest.map_structure(lambda array: array.stack(), arrays),
                                 count)

    def _prestacked_train_steps(self, iterator):
        # One element of `_stack_executions`: an execution's batches stacked (and padded) by
        # tf.data in its background thread, then the same XLA loop.
        element = iterator.get_next_as_optional()
        if not element.has_value():  # the data ended before steps_per_epoch
            return _no_steps()
        return self._run_stacked(*element.get_value())

    def _run_stacked(self, stacked, count):
        """The one replica's XLA loop over `count` of the stacked batches."""
        return self.strategy.experimental_local_results(
            self.strategy.run(self._jit_local_steps, args=(stacked, count)))[0]

    def _train_round(self, iterator):
        """Up to `parallel_copies` executions side by side, one per model copy, then merged.

        The model steps through the first execution on this thread while each copy steps
        through one of the next on a thread of its own, all from the same weights; then each
        copy's change is added to the model. Returns the executions' sums, as one would.
        """
        elements = []
        for _ in range(self.parallel_copies):
            element = iterator.get_next_as_optional()
            if not element.has_value():
                break
            elements.append(element.get_value())
        if len(elements) <= 1:
            return self._run_stacked(*elements[0]) if elements else _no_steps()
        counts = [int(count) for _, count in elements]
        # Copy k's schedule starts where the executions before it end.
        self._start_round(len(elements) - 1, tf.constant(np.cumsum(counts)[:-1], tf.int64))
        futures = [self._copy_threads.submit(self.strategy.run, copy.train_steps, args=element)
                   for copy, element in zip(self._copies, elements[1:])]
        sums = [self._run_stacked(*elements[0])] + [
            self.strategy.experimental_local_results(future.result())[0] for future in futures]
        self._end_round(len(elements) - 1)
        sums = np.stack([s.numpy() for s in sums])
        # Summed: losses, weights, regularisation and steps; the last loss; all finite.
        return tf.constant([*sums[:, :4].sum(0), sums[-1, 4], sums[:, 5].min()], tf.float64)

    def _copy_train_steps(self, copy):
        """`_local_train_steps` bound to `copy`, to be compiled as that copy's own loop."""

        def train_steps(batches, count):
            return self._local_train_steps(batches, count, copy)

        return train_steps

    def _merged_variables(self, copy=None):
        """The variables a round merges: trainable weights, then the metrics' sums."""
        model, _, metrics, _ = copy or self._own
        return [*model.trainable_variables, *(v for m in metrics for v in m.variables)]

    def _start_round_fn(self, copies, offsets):
        """Copies (and the round's base) take the model's weights; copy k's step counter
        starts `offsets[k]` steps on, its learning rate the model's."""
        values = self._merged_variables()
        for base, value in zip(self._round_base, values):
            base.assign(value)
        learning_rate = getattr(self.optimizer, "_learning_rate", None)
        for k, copy in enumerate(self._copies[:copies]):
            for target, value in zip(self._merged_variables(copy), values):
                target.assign(value)
            copy.optimizer.iterations.assign(self.optimizer.iterations + offsets[k])
            if isinstance(learning_rate, keras.Variable):
                copy.optimizer._learning_rate.assign(learning_rate)

    def _end_round_fn(self, copies):
        """The model's weights plus every copy's change; its step counter, the last copy's."""
        used = self._copies[:copies]
        changed = [self._merged_variables(copy) for copy in used]
        for i, (value, base) in enumerate(zip(self._merged_variables(), self._round_base)):
            value.assign_add(tf.add_n([variables[i] - base for variables in changed]))
        self.optimizer.iterations.assign(used[-1].optimizer.iterations)

    def _distributed_eval_steps(self, iterator, max_steps):
        return self._run_steps(self._replica_eval_step, iterator, max_steps, False)

    # ------------------------------------------------------------------------ public
    def restore(self):
        """Restores the latest checkpoint, if any. Returns (whole epochs, global step).

        Under multi-worker each worker keeps its own checkpoints, saved at the same steps;
        a job killed between two workers' saves leaves them one save apart. All workers then
        restore the newest step they all hold, so they resume on the same batch.
        """
        if self._manager is None:
            return 0, 0
        path = self._agreed_checkpoint()
        if path is None:
            return 0, 0
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        checkpoint = (self._checkpoint if "callback_states" in saved
                      else self._checkpoint_without_callbacks)
        checkpoint.restore(path).assert_existing_objects_matched()
        self._totals.after_restore()
        return int(self.epoch.numpy()), int(self.optimizer.iterations.numpy())

    def _agreed_checkpoint(self):
        """The checkpoint to resume from: the latest, or under multi-worker the newest step
        that every worker holds (None: start afresh)."""
        num_workers = worker_info(self.strategy)[2]
        if num_workers == 1:
            return self._manager.latest_checkpoint
        # The directory's checkpoint list: the manager's own leaves out entries without
        # timestamps.
        state = tf.train.get_checkpoint_state(self._manager.directory)
        paths = {_checkpoint_step(p): p for p in (state.all_model_checkpoint_paths
                                                  if state else [])}
        latest = max(paths, default=0)
        steps = _gather_from_workers(self.strategy, num_workers, latest)
        agreed = min(steps)
        holds = _gather_from_workers(self.strategy, num_workers,
                                     int(agreed == 0 or agreed in paths))
        if not all(holds):
            raise ConfigError(
                f"the workers' checkpoints share no step (their latest: {sorted(set(steps))}); "
                "restore a common checkpoint to every worker's model_dir or start afresh")
        if agreed != latest:
            self._say(f"resuming at step {agreed}, the newest checkpoint every worker holds "
                      f"(this worker's latest is step {latest})" if agreed else
                      "starting afresh: a worker holds no checkpoint")
        return paths.get(agreed)

    def evaluate(self, make_dataset, steps=None):
        """Loss and metrics over a dataset of global batches (a partial last batch is fine).

        Args:
            make_dataset: Zero-argument callable returning a dataset of global batches (its
                size may be unknown: it is read to the end).
            steps: Optional cap on the number of global batches.

        Returns:
            Dict with "loss" (the weighted mean over the data), "regularization_loss" and each
            metric's result, as Python floats.

        Raises:
            ConfigError: If the dataset holds no example.
        """
        for metric in self.metrics:
            metric.reset_state()
        iterator = iter(inputs.distribute(self.strategy, make_dataset, self.global_batch_size))
        cap = steps if steps is not None else np.iinfo(np.int64).max
        loss_sum, weight, reg_sum, done, _, _ = self._eval_execution(
            iterator, tf.constant(cap, tf.int64)).numpy()
        if weight <= 0:
            raise ConfigError("the evaluation split is empty (no example to evaluate)")
        results = {"loss": float(loss_sum / weight),
                   "regularization_loss": float(reg_sum / max(done, 1))}
        results.update(self._metric_values())
        return results

    def fit(self, train_data, epochs, validation_data=None, steps_per_epoch=None):
        """Trains to `epochs`, resuming from the latest checkpoint in `model_dir`.

        Args:
            train_data: `epoch -> dataset of global batches`; the batches must depend only on
                (seed, epoch), so a resumed run can skip exactly those it trained.
            epochs: Total epochs (a resumed run trains only the missing steps).
            validation_data: Zero-argument callable returning a dataset of global batches.
            steps_per_epoch: Global batches per epoch; default: the dataset's cardinality,
                or (unknown cardinality) until the dataset ends.

        Returns:
            A `TrainResult`.

        Raises:
            ConfigError: If the training data gives no full global batch.
        """
        start_epoch, start_step = self.restore()
        history = self._load_history(start_epoch)
        self.model.stop_training = False
        self.callbacks.set_params({"epochs": epochs, "steps": steps_per_epoch, "verbose": 0})
        status, diverged_at = "completed", None
        trained_examples, t_start = 0, time.perf_counter()

        self.callbacks.on_train_begin()
        # After on_train_begin, which resets Keras callbacks: their state when last saved.
        if self._callback_states.apply():
            status = "stopped"  # a callback had stopped training before the checkpoint
            epochs = start_epoch
        for epoch in range(start_epoch, epochs):
            skip = int(self.step_in_epoch.numpy())
            if skip == 0:
                self._totals.reset()
                for metric in self.metrics:
                    metric.reset_state()
            self.callbacks.on_epoch_begin(epoch)
            epoch_start = time.perf_counter()
            # Each epoch's own length: epochs of subsampled or filtered data may differ.
            dataset = train_data(epoch)
            epoch_steps = steps_per_epoch or _known_steps(dataset)
            step, epoch_status = self._train_epoch(dataset, skip, epoch_steps)
            trained_examples += (step - skip) * self.global_batch_size
            if epoch_status == "diverged":
                status, diverged_at = "diverged", int(self.optimizer.iterations.numpy())
                self._say(f"diverged: loss is not finite at step {diverged_at}; stopping")
                break
            if step == 0:
                raise ConfigError("the training split gives no full global batch of "
                                  f"{self.global_batch_size} examples")
            epoch_seconds = time.perf_counter() - epoch_start
            train_logs = {**self._totals.logs(), **self._metric_values()}
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
            self.step_in_epoch.assign(0)
            self._say(self._epoch_line(epoch + 1, epochs, logs, epoch_seconds, step - skip))
            # Callbacks first, so that the checkpoint holds their state after this epoch
            # (and whether one stopped training).
            self.callbacks.on_epoch_end(epoch, logs)
            self._save(history)
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
            resumed_from_step=start_step,
        )

    # ----------------------------------------------------------------------- helpers
    def _build_copies(self):
        """Builds the `parallel_copies - 1` model copies that train beside the model in a
        round, the round's base weights, and the round's compiled start and end."""
        if self._jit_local_steps is None or not (
                isinstance(self.strategy, tf.distribute.OneDeviceStrategy)
                or (self.strategy is tf.distribute.get_strategy()
                    and not tf.distribute.has_strategy())):
            raise ConfigError(f"--parallel_copies={self.parallel_copies} needs --jit_compile "
                              "(with jit_update) on one device (--strategy=auto or "
                              "one_device); pass --parallel_copies=1 otherwise")
        if self.model.non_trainable_variables:
            raise ConfigError(f"--parallel_copies > 1 needs a model without non-trainable "
                              f"variables; {self.model.name} has "
                              f"{len(self.model.non_trainable_variables)}")
        slots = [v.path for v in self.optimizer.variables if v is not self.optimizer.iterations
                 and v is not getattr(self.optimizer, "_learning_rate", None)]
        if slots:
            raise ConfigError(f"--parallel_copies > 1 needs an optimizer without slots (plain "
                              f"SGD); {type(self.optimizer).__name__} has {slots[0]}")
        with self.strategy.scope():
            for _ in range(self.parallel_copies - 1):
                model, optimizer = self.task.build_model(), self.task.build_optimizer()
                optimizer.build(model.trainable_variables)
                model.compile(optimizer=optimizer, jit_compile=False)  # as the model's
                copy = _ModelCopy(model, optimizer, list(self.task.build_metrics()), None)
                self._copies.append(copy._replace(train_steps=tf.function(
                    self._copy_train_steps(copy), jit_compile=True)))
            self._round_base = [tf.Variable(tf.zeros_like(v), trainable=False)
                                for v in self._merged_variables()]
        # Idle between rounds; the threads end when the trainer is collected.
        self._copy_threads = concurrent.futures.ThreadPoolExecutor(len(self._copies))
        self._start_round = tf.function(self._start_round_fn, jit_compile=True)
        self._end_round = tf.function(self._end_round_fn, jit_compile=True)

    def _train_epoch(self, dataset, skip, steps_per_epoch):
        """Trains one epoch from batch `skip`. Returns (steps done in the epoch, status)."""
        source = dataset.skip(skip) if skip else dataset
        step = skip
        global_step = int(self.optimizer.iterations.numpy())
        stacked = self._jit_local_steps is not None and all(
            spec.shape.is_fully_defined() for spec in tf.nest.flatten(dataset.element_spec))
        # When every execution but the last is a full steps_per_execution (no checkpoint
        # boundary cuts one short), tf.data stacks them in its background thread: reading
        # and stacking the batches in the execution itself costs ~15% of a sub-millisecond
        # step (word2vec).
        prestacked = (stacked and inputs.passes_through(self.strategy)
                      and self._uniform_executions(step, global_step, steps_per_epoch))
        make_dataset = ((lambda: _stack_executions(source, self.steps_per_execution))
                        if prestacked else (lambda: source))
        iterator = iter(inputs.distribute(self.strategy, make_dataset, self.global_batch_size))
        window_start = time.perf_counter()
        progbar = self._progbar(steps_per_epoch)
        while steps_per_epoch is None or step < steps_per_epoch:
            count = self._execution_length(step, global_step, steps_per_epoch)
            self.callbacks.on_train_batch_begin(step)
            if prestacked and self._copies:
                sums = self._train_round(iterator)
            elif prestacked:
                sums = self._train_prestacked_execution(iterator)
            elif count == 1 and steps_per_epoch is not None:
                sums = self._train_single_step(iterator)
            elif stacked:
                sums = self._train_stacked_execution(iterator, tf.constant(count, tf.int64))
            else:
                sums = self._train_execution(iterator, tf.constant(count, tf.int64))
            loss_sum, weight, reg_sum, done, loss, finite = sums.numpy()
            done = int(done)
            if not finite:
                return step + done, "diverged"
            if done == 0:
                break  # the dataset ended (unknown cardinality)
            self._totals.add(loss_sum, weight, reg_sum, done)
            previous_global, global_step = global_step, global_step + done
            step += done
            loss = float(loss)
            self.callbacks.on_train_batch_end(step - 1, {"loss": loss})
            if progbar is not None:
                progbar.update(step, [("loss", loss)])
            if _crossed(previous_global, global_step, self.log_every_steps):
                # Every worker reads the metrics: under multi_worker a sum-on-read metric is
                # a collective, which all workers must issue in the same order.
                metric_values = self._metric_values()
                now = time.perf_counter()
                rate = (global_step - previous_global) / max(now - window_start, 1e-9)
                window_start = now
                if self._writers:
                    values = {"loss": loss, **metric_values, "steps_per_second": rate,
                              "examples_per_second": rate * self.global_batch_size}
                    self._write_train_scalars(tf.constant(global_step, tf.int64),
                                              tuple(values), tf.constant(list(values.values()),
                                                                         tf.float32))
            if (self.checkpoint_every_steps and self._manager is not None
                    and _crossed(previous_global, global_step, self.checkpoint_every_steps)
                    and (steps_per_epoch is None or step < steps_per_epoch)):
                self.step_in_epoch.assign(step)
                self._totals.before_save()
                self._manager.save(checkpoint_number=global_step)
            if done < count or self.model.stop_training:
                break
        return step, "ok"

    def _execution_length(self, step, global_step, steps_per_epoch):
        """Steps in the next execution: never past the epoch end or a checkpoint boundary."""
        count = self.steps_per_execution
        if steps_per_epoch is not None:
            count = min(count, steps_per_epoch - step)
        if self.checkpoint_every_steps:
            count = min(count, self.checkpoint_every_steps
                        - global_step % self.checkpoint_every_steps)
        return max(count, 1)

    def _uniform_executions(self, step, global_step, steps_per_epoch):
        """Whether the epoch's executions from `step` on are all full but the last."""
        if steps_per_epoch is None:
            return False
        while step < steps_per_epoch:
            count = self._execution_length(step, global_step, steps_per_epoch)
            step, global_step = step + count, global_step + count
            if count < self.steps_per_execution and step < steps_per_epoch:
                return False
        return True

    def _train_scalars(self, step, names, values):
        # One compiled call reads the learning rate and writes every scalar: eagerly, the
        # schedule and the writes cost ~4 ms per log, a tenth of a 50-step word2vec execution.
        scalars = dict(zip(names, tf.unstack(values)))
        scalars["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        self._writers.train_scalars(step, scalars)

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
        self._totals.before_save()
        self._manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))

    def _progbar(self, steps):
        if self.verbose and self.is_chief and sys.stdout.isatty():
            return keras.utils.Progbar(steps, stateful_metrics=["loss"])
        return None

    def _epoch_line(self, epoch, epochs, logs, seconds, steps):
        parts = [f"epoch {epoch}/{epochs}"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items()
                  if not (k.endswith("regularization_loss") and v == 0)]
        parts.append(f"{seconds:.1f}s ({steps * self.global_batch_size / max(seconds, 1e-9):.0f} ex/s)")
        return " - ".join(parts)

    def _say(self, line):
        if self.verbose and self.is_chief:
            print(line, flush=True)


def _crossed(before, after, every):
    """Whether a multiple of `every` lies in (before, after]."""
    return after // every > before // every


def _no_steps():
    """An execution's sums when the data had ended before it: no step, finite."""
    return tf.constant([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], tf.float64)


def _known_steps(dataset):
    """A dataset's number of batches, or None when tf.data cannot know it (read to the end)."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ConfigError("the training data is infinite: pass steps_per_epoch")
    return None if cardinality == tf.data.UNKNOWN_CARDINALITY else cardinality


def _stack_executions(dataset, size):
    """Batches of `dataset` stacked `size` at a time on a new leading (step) axis.

    Elements are `(stack, count)`: the last stack, with fewer than `size` batches, is padded
    with zeros to the one static shape (as `Trainer._stacked_train_steps` pads), so that one
    compiled loop serves every execution; `count` (int32) says how many are real.
    """

    def pad(*batch):
        batch = batch[0] if len(batch) == 1 else batch  # tf.data unpacks tuples
        count = tf.shape(tf.nest.flatten(batch)[0])[0]

        def pad_one(t):
            t = tf.pad(t, [[0, size - count]] + [[0, 0]] * (t.shape.rank - 1))
            return tf.ensure_shape(t, [size, *t.shape[1:]])

        return tf.nest.map_structure(pad_one, batch), count

    return dataset.batch(size).map(pad)


def _checkpoint_step(path):
    return int(path.rsplit("-", 1)[1])


def _gather_from_workers(strategy, num_workers, value):
    """Every worker's int `value` (one per worker, in task order): a collective all workers
    must issue."""
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([value], tf.int64))
    gathered = strategy.gather(values, axis=0).numpy()
    # Several local replicas per worker each carry that worker's value.
    per_worker = gathered.reshape(num_workers, -1)[:, 0]
    return [int(v) for v in per_worker]


def _seed_generator_states(model):
    """The state variables of the model's random seed generators (dropout, noise layers).

    Checkpointing them makes a resumed run draw the same dropout masks as an uninterrupted one.
    """
    states = []
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", []):
            states.append(generator.state)
    return states
