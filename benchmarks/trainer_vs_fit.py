"""Per-epoch time of the experiments' training loop vs `keras.Model.fit`, in one run.

Both sides train the same MLP (784 -> 256 -> 256 -> 10, relu) from the same initial weights
with Adam, the same batch size, sparse categorical cross-entropy and an accuracy metric, on
the same random data in the same per-epoch order (`epoch_batches(seed=0, epoch=e)`), without
checkpoints or output (`model_dir=None`, `verbose=0`). Each side trains one epoch per call and
the calls are interleaved (ours, fit, ours, fit, ...) so that load on a shared machine hits
both alike. An epoch's time runs from the `on_epoch_begin` to the `on_epoch_end` callback,
which both loops drive; the first epoch (tracing) is a warm-up and is not counted. The table
gives the median over the timed epochs and the ratio ours / fit (target <= 1.05).

Rows: our `Trainer` under the default strategy and under `OneDeviceStrategy` (what the
experiments use on a CPU), each against `fit`; then the same with validation after every
epoch on both sides. `--profile` adds a per-step breakdown of our loop's host work.

Run: `python -m benchmarks.trainer_vs_fit` (add `--quick` for a short run).
"""

import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from experiments.runtime import inputs
from experiments.runtime.loop import Trainer
from experiments.runtime.task import SupervisedTask, Task

TARGET_RATIO = 1.05
FEATURES, CLASSES, HIDDEN = 784, 10, 256


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time, from `on_epoch_begin` to `on_epoch_end`."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build_model(seed=0):
    """The benchmark's MLP, with initial weights fixed by `seed`."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(HIDDEN, activation="relu"),
        keras.layers.Dense(CLASSES),
    ])


def make_data(n, seed=0):
    """Random features and labels that a linear map of the features partly predicts."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, CLASSES)).astype("float32")
    y = np.argmax(x @ w + rng.normal(scale=8.0, size=(n, CLASSES)), axis=1).astype("int32")
    return x, y


def _loss(reduction="sum_over_batch_size"):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)


def _accuracy():
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


class OursRunner:
    """Our `Trainer`, one epoch per call (the epoch index picks the data order)."""

    def __init__(self, strategy, data, batch_size, validation):
        (self.x, self.y), (self.x_val, self.y_val) = data
        self.batch_size = batch_size
        self.timer = EpochTimer()
        self.call_seconds = []  # whole fit() calls, set-up included
        task = SupervisedTask(build_model, lambda: keras.optimizers.Adam(1e-3),
                              _loss(reduction=None), metrics_fn=lambda: [_accuracy()])
        self.trainer = Trainer(strategy, task, batch_size, model_dir=None,
                               callbacks=[self.timer], verbose=0)
        self.validation = None
        if validation:
            self.validation = lambda: inputs.epoch_batches(
                self.x_val, self.y_val, batch_size, shuffle=False, drop_remainder=False)

    def epoch(self, e):
        # Without a model_dir nothing is restored, so every call trains "epoch 0" of 1;
        # the lambda hands it epoch e's order.
        start = time.perf_counter()
        result = self.trainer.fit(
            lambda _: inputs.epoch_batches(self.x, self.y, self.batch_size, epoch=e), 1,
            validation_data=self.validation)
        self.call_seconds.append(time.perf_counter() - start)
        return result.history[-1]["train"]["accuracy"]


class FitRunner:
    """`keras.Model.fit`, one epoch per call on the same batches as ours."""

    def __init__(self, data, batch_size, validation):
        (self.x, self.y), (x_val, y_val) = data
        self.batch_size = batch_size
        self.timer = EpochTimer()
        self.call_seconds = []  # whole fit() calls, set-up included
        self.model = build_model()
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_loss(),
                           metrics=[_accuracy()], jit_compile=False)
        self.validation = None
        if validation:
            self.validation = inputs.epoch_batches(
                x_val, y_val, batch_size, shuffle=False, drop_remainder=False)

    def epoch(self, e):
        start = time.perf_counter()
        history = self.model.fit(
            inputs.epoch_batches(self.x, self.y, self.batch_size, epoch=e), epochs=1,
            verbose=0, callbacks=[self.timer], validation_data=self.validation)
        self.call_seconds.append(time.perf_counter() - start)
        return history.history["accuracy"][-1]


def compare(strategy_name, data, batch_size, epochs, validation):
    """Interleaves `epochs` timed epochs (after one warm-up) of ours and fit.

    Returns:
        A dict with the median epoch times (ms), their ratio and the last train accuracies.
    """
    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0") if strategy_name == "one_device"
                else tf.distribute.get_strategy())
    ours = OursRunner(strategy, data, batch_size, validation)
    peer = FitRunner(data, batch_size, validation)
    for e in range(epochs + 1):
        acc_ours = ours.epoch(e)
        acc_peer = peer.epoch(e)
    ours_ms = 1e3 * statistics.median(ours.timer.seconds[1:])
    peer_ms = 1e3 * statistics.median(peer.timer.seconds[1:])
    ours_call_ms = 1e3 * statistics.median(ours.call_seconds[1:])
    peer_call_ms = 1e3 * statistics.median(peer.call_seconds[1:])
    return {
        "name": f"Trainer[{strategy_name}]" + (" +val" if validation else ""),
        "ours_ms": ours_ms, "peer": "Model.fit" + (" +val" if validation else ""),
        "peer_ms": peer_ms, "ratio": ours_ms / peer_ms, "target": TARGET_RATIO,
        "ours_call_ms": ours_call_ms, "peer_call_ms": peer_call_ms,
        "call_ratio": ours_call_ms / peer_call_ms,
        "acc_ours": acc_ours, "acc_peer": acc_peer,
    }


def profile_host_work(data, batch_size, rounds=3):
    """Times the pieces of our loop's host work in isolation, interleaved over `rounds`.

    Under `OneDeviceStrategy`: per step, the compiled step alone, then with `float(loss)`,
    `optimizer.iterations.numpy()` and the callback calls added, and Keras' own step function
    on a plain iterator; per epoch, building the distributed iterator and a validation pass.

    Returns:
        Dict of name -> median microseconds, and the tracing counts of our step functions.
    """
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    ours = OursRunner(strategy, data, batch_size, validation=True)
    ours.epoch(0)  # traces the train and eval steps
    trainer = ours.trainer
    peer = FitRunner(data, batch_size, validation=True)
    peer.epoch(0)  # builds and traces model.train_function and test_function
    steps = len(ours.y) // batch_size

    def make_dataset():
        return inputs.epoch_batches(ours.x, ours.y, batch_size)

    def dist_iter():
        return iter(inputs.distribute(strategy, make_dataset, batch_size))

    def plain_iter():
        return iter(make_dataset())

    one = tf.constant(1, tf.int64)

    def step(it):
        return trainer._train_execution(it, one)[4]

    def step_loop_body(it):
        trainer.callbacks.on_train_batch_begin(0)
        loss = float(step(it))
        int(trainer.optimizer.iterations.numpy())
        trainer.callbacks.on_train_batch_end(0, {"loss": loss})

    per_step = {
        "step: ours, result not read": (dist_iter, step),
        "step: ours + float(loss)": (dist_iter, lambda it: float(step(it))),
        "step: ours + float(loss) + iterations.numpy()": (
            dist_iter, lambda it: (float(step(it)), int(trainer.optimizer.iterations.numpy()))),
        "step: ours, full loop body (+ callbacks)": (dist_iter, step_loop_body),
        "step: Keras train_function, not read": (plain_iter, peer.model.train_function),
        "input: next() on inputs.distribute iterator": (dist_iter, next),
        "input: next() on plain epoch_batches": (plain_iter, next),
    }
    val = lambda: inputs.epoch_batches(  # noqa: E731
        ours.x_val, ours.y_val, batch_size, shuffle=False, drop_remainder=False)
    per_epoch = {
        "epoch: epoch_batches(...) built": make_dataset,
        "epoch: inputs.distribute(...) + iter()": dist_iter,
        "epoch: Keras-style iter(experimental_distribute_dataset)": lambda: iter(
            strategy.experimental_distribute_dataset(make_dataset())),
        "epoch: ours evaluate() on the validation set": lambda: trainer.evaluate(val),
        "epoch: Keras model.evaluate on the validation set": lambda: peer.model.evaluate(
            peer.validation, verbose=0),
    }
    times = {name: [] for name in list(per_step) + list(per_epoch)}
    for _ in range(rounds):
        for name, (make_iter, body) in per_step.items():
            iterator = make_iter()
            for _ in range(steps):
                start = time.perf_counter()
                body(iterator)
                times[name].append(time.perf_counter() - start)
        for name, fn in per_epoch.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result = {name: 1e6 * statistics.median(t) for name, t in times.items()}
    tracing = {
        "train execution": trainer._train_execution.experimental_get_tracing_count(),
        "eval execution": trainer._eval_execution.experimental_get_tracing_count(),
    }
    return result, tracing


class EmbeddingDotTask(Task):
    """A tiny model with sub-millisecond steps: sigmoid(<E_t[target], E_c[context]>)."""

    def __init__(self, vocab, dim):
        self.vocab, self.dim = vocab, dim

    def build_model(self):
        keras.utils.set_random_seed(0)
        target = keras.Input((), dtype="int32")
        context = keras.Input((), dtype="int32")
        t = keras.layers.Embedding(self.vocab, self.dim)(target)
        c = keras.layers.Embedding(self.vocab, self.dim)(context)
        return keras.Model([target, context], keras.ops.sum(t * c, axis=-1))

    def build_optimizer(self):
        return keras.optimizers.SGD(0.05)

    def compute_loss(self, model, batch, training):
        logits = model([batch["target"], batch["context"]], training=training)
        losses = tf.nn.sigmoid_cross_entropy_with_logits(batch["label"], logits)
        return tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32)


def steps_per_execution_row(quick):
    """Steps/s of the tiny embedding-dot model at steps_per_execution 1 and 32 (batch 1024)."""
    vocab, dim, batch = 5000, 32, 1024
    steps = 64 if quick else 256
    rng = np.random.default_rng(0)
    data = {"target": rng.integers(0, vocab, steps * batch).astype("int32"),
            "context": rng.integers(0, vocab, steps * batch).astype("int32"),
            "label": rng.integers(0, 2, steps * batch).astype("float32")}
    runners = {}
    for spe in (1, 32):
        timer = EpochTimer()
        trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"),
                          EmbeddingDotTask(vocab, dim), batch, steps_per_execution=spe,
                          callbacks=[timer], verbose=0)
        runners[spe] = (trainer, timer)
    epochs = 3 if quick else 6
    for e in range(epochs + 1):  # interleaved; epoch 0 is the warm-up (tracing)
        for trainer, _ in runners.values():
            trainer.fit(lambda _: inputs.epoch_batches(data, None, batch, epoch=e), 1)
    rate = {spe: steps / statistics.median(timer.seconds[1:])
            for spe, (_, timer) in runners.items()}
    return rate[1], rate[32]


def machine():
    gpus = tf.config.list_physical_devices("GPU")
    import os
    return (f"{os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}, "
            f"{'GPU: ' + str(len(gpus)) if gpus else 'no GPU'}")


def print_table(rows):
    header = (f"{'ours':<28} {'ours ms':>9} {'peer':<18} {'peer ms':>9} {'ratio':>6} "
              f"{'target':>6}  ok   | whole call: ours ms, fit ms, ratio")
    print(header)
    print("-" * len(header))
    for r in rows:
        ok = "pass" if r["ratio"] <= r["target"] else "MISS"
        print(f"{r['name']:<28} {r['ours_ms']:9.1f} {r['peer']:<18} {r['peer_ms']:9.1f} "
              f"{r['ratio']:6.3f} {r['target']:6.2f}  {ok} | {r['ours_call_ms']:9.1f} "
              f"{r['peer_call_ms']:9.1f} {r['call_ratio']:6.3f}")


def run(quick: bool = False, validation: bool = True) -> list[dict]:
    """Runs the comparisons; returns one dict per row (keys as the component benchmarks')."""
    n, batch_size = (2048, 64) if quick else (6144, 64)
    epochs = 4 if quick else 9
    data = (make_data(n, seed=0), make_data(n // 4, seed=1))
    rows = []
    for strategy_name in ("default", "one_device"):
        rows.append(compare(strategy_name, data, batch_size, epochs, validation=False))
    if validation:
        rows.append(compare("one_device", data, batch_size, epochs, validation=True))
    return rows


def main(argv):
    quick = "--quick" in argv
    print(f"Trainer vs Model.fit, per-epoch median after a warm-up epoch ({machine()})")
    print("(epoch: on_epoch_begin -> on_epoch_end; whole call: one fit() call of one epoch)")
    rows = run(quick=quick, validation="--no-val" not in argv)
    print_table(rows)
    one, many = steps_per_execution_row(quick)
    print(f"{'tiny embedding-dot, batch 1024':<28} steps/s: steps_per_execution=1 {one:8.0f}, "
          f"=32 {many:8.0f}, gain {many / one:.2f}x")
    for r in rows:
        print(f"  {r['name']}: last train accuracy ours {r['acc_ours']:.4f}, "
              f"fit {r['acc_peer']:.4f}")
    if "--profile" in argv:
        n = 2048 if quick else 6144
        times, tracing = profile_host_work((make_data(n), make_data(n // 4, seed=1)), 64)
        print("\nWhere our loop spends host time (OneDeviceStrategy, median microseconds):")
        for name, us in times.items():
            print(f"  {name:<58} {us:10.1f}")
        print(f"  tracing counts after all calls: {tracing}")

if __name__ == "__main__":
    main(sys.argv[1:])
