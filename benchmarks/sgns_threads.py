"""Can an XLA-compiled SGNS step use the second core? Hogwild threads, copies, split tables.

gensim trains word2vec on every core with Hogwild (threads update the shared vectors without
locks). This measures whether the same works for our XLA step (the one `Trainer(jit_update=
True)` runs for word2vec: gather, two small batched dots, sigmoid, scatter of the target and
context rows; 1,024 pairs x (1 + 5) contexts, 100-d, 16k words, 50 steps per launch):

- 1 thread vs 2 threads calling the same compiled step on the same variables. If XLA let the
  two launches run at once, steps/s would rise (up to 2x) and some updates would be lost or
  interleaved; a counter variable updated by every step checks that none is lost.
- 2 threads, each calling its own compiled step on its own copy of the tables: what
  `Trainer(parallel_copies=2)` does between its merges (word2vec's default), if TensorFlow
  lets launches on different variables run at once.
- the same step over two half-width tables (50 + 50 dimensions) in one launch: whether XLA
  runs the two independent halves on two cores.

Run: `python -m benchmarks.sgns_threads [--rounds=N]`. Measured on the 2-core box (README,
"word2vec"), two runs: 2 threads 0.97x and 0.99x the steps/s of 1 thread with no update lost
(the launches take turns: TensorFlow holds the variables of an XLA launch for the whole
launch), halves 0.55x and 0.59x (XLA runs them one after the other, and pays twice the
gathers); a third run: 1 thread 797 steps/s, 2 threads 0.99x, 2 copies 1.80x, halves 0.54x.
"""

import os
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from benchmarks import positive_int_flag

VOCAB, DIM, BATCH, STEPS, CONTEXTS = 16_000, 100, 1024, 50, 6


def _step_function(tables, counter, targets, contexts):
    """An XLA loop of STEPS SGD steps of SGNS over `tables` [(W, C), ...] split by dimension."""
    labels = tf.concat([tf.ones((BATCH, 1)), tf.zeros((BATCH, CONTEXTS - 1))], 1)

    @tf.function(jit_compile=True)
    def steps():
        def body(i):
            t, x = targets[i], contexts[i]
            rows = [(tf.gather(w, t), tf.gather(c, x)) for w, c in tables]
            logits = tf.add_n([tf.einsum("bd,bkd->bk", w, c) for w, c in rows])
            grad = 0.025 * (tf.sigmoid(logits) - labels)
            for (w, c), (w_rows, c_rows) in zip(tables, rows):
                w.scatter_sub(tf.IndexedSlices(tf.einsum("bk,bkd->bd", grad, c_rows), t))
                c_grad = tf.einsum("bk,bd->bkd", grad, w_rows)
                c.scatter_sub(tf.IndexedSlices(tf.reshape(c_grad, (-1, c_grad.shape[-1])),
                                               tf.reshape(x, (-1,))))
            counter.assign_add(1)
            return i + 1

        tf.while_loop(lambda i: i < STEPS, body, [tf.constant(0)])

    return steps


def _tables(parts, rng):
    width = DIM // parts
    return [(tf.Variable(rng.uniform(-0.5 / DIM, 0.5 / DIM, (VOCAB, width)).astype("float32")),
             tf.Variable(np.zeros((VOCAB, width), "float32"))) for _ in range(parts)]


def _steps_per_second(fns, calls):
    """Steps/s of calling each of `fns` `calls` times, each on a thread of its own."""

    def work(fn):
        for _ in range(calls):
            fn()

    workers = [threading.Thread(target=work, args=(fn,)) for fn in fns]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(fns) * calls * STEPS / (time.perf_counter() - start)


def run(rounds=5, calls=10):
    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, VOCAB + 1)
    zipf /= zipf.sum()
    targets = tf.constant(rng.choice(VOCAB, (STEPS, BATCH), p=zipf), tf.int32)
    contexts = tf.constant(rng.choice(VOCAB, (STEPS, BATCH, CONTEXTS), p=zipf), tf.int32)
    # The copy counts its steps in a counter of its own: a shared one would be held too.
    counters = [tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)]
    whole = _step_function(_tables(1, rng), counters[0], targets, contexts)
    copy = _step_function(_tables(1, rng), counters[1], targets, contexts)
    halves = _step_function(_tables(2, rng), counters[0], targets, contexts)
    whole(), copy(), halves()  # compile
    rates = {"1 thread": [], "2 threads": [], "2 copies": [], "halves": []}
    lost = 0
    for _ in range(rounds):  # interleaved, so that load drift hits them all alike
        for name, fns in (("1 thread", [whole]), ("2 threads", [whole, whole]),
                          ("2 copies", [whole, copy]), ("halves", [halves])):
            before = sum(int(c.numpy()) for c in counters)
            rates[name].append(_steps_per_second(fns, calls))
            lost += len(fns) * calls * STEPS - (sum(int(c.numpy()) for c in counters)
                                                - before)
    return {name: float(np.median(r)) for name, r in rates.items()}, lost


def main(argv):
    rounds = positive_int_flag(argv, "rounds", 5)
    rates, lost = run(rounds)
    print(f"SGNS XLA step, {BATCH} pairs x {CONTEXTS} contexts, {DIM}-d, {VOCAB:,} words, "
          f"{STEPS} steps per launch; {os.cpu_count()} CPUs; median of {rounds} rounds")
    for name, rate in rates.items():
        print(f"{name:<10}{rate:>10.0f} steps/s{rate / rates['1 thread']:>8.2f}x")
    print(f"updates lost by the threaded runs: {lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
