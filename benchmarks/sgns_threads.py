"""Can an XLA-compiled SGNS step use the second core? Hogwild threads and split tables.

gensim trains word2vec on every core with Hogwild (threads update the shared vectors without
locks). This measures whether the same works for our XLA step (the one `Trainer(jit_update=
True)` runs for word2vec: gather, two small batched dots, sigmoid, scatter of the target and
context rows; 1,024 pairs x (1 + 5) contexts, 100-d, 16k words, 50 steps per launch):

- 1 thread vs 2 threads calling the same compiled step on the same variables. If XLA let the
  two launches run at once, steps/s would rise (up to 2x) and some updates would be lost or
  interleaved; a counter variable updated by every step checks that none is lost.
- the same step over two half-width tables (50 + 50 dimensions) in one launch: whether XLA
  runs the two independent halves on two cores.

Run: `python -m benchmarks.sgns_threads [--rounds=N]`. Measured on the 2-core box (README,
"word2vec"), two runs: 2 threads 0.97x and 0.99x the steps/s of 1 thread with no update lost
(the launches take turns: TensorFlow holds the variables of an XLA launch for the whole
launch), halves 0.55x and 0.59x (XLA runs them one after the other, and pays twice the
gathers).
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


def _steps_per_second(fn, threads, calls):
    def work():
        for _ in range(calls):
            fn()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * calls * STEPS / (time.perf_counter() - start)


def run(rounds=5, calls=10):
    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, VOCAB + 1)
    zipf /= zipf.sum()
    targets = tf.constant(rng.choice(VOCAB, (STEPS, BATCH), p=zipf), tf.int32)
    contexts = tf.constant(rng.choice(VOCAB, (STEPS, BATCH, CONTEXTS), p=zipf), tf.int32)
    counter = tf.Variable(0, dtype=tf.int64)
    whole = _step_function(_tables(1, rng), counter, targets, contexts)
    halves = _step_function(_tables(2, rng), counter, targets, contexts)
    whole(), halves()  # compile
    rates = {"1 thread": [], "2 threads": [], "halves": []}
    lost = 0
    for _ in range(rounds):  # interleaved, so that load drift hits all three alike
        for name, fn, threads in (("1 thread", whole, 1), ("2 threads", whole, 2),
                                  ("halves", halves, 1)):
            before = int(counter.numpy())
            rates[name].append(_steps_per_second(fn, threads, calls))
            lost += threads * calls * STEPS - (int(counter.numpy()) - before)
    return {name: float(np.median(r)) for name, r in rates.items()}, lost


def main(argv):
    rounds = positive_int_flag(argv, "rounds", 5)
    rates, lost = run(rounds)
    print(f"SGNS XLA step, {BATCH} pairs x {CONTEXTS} contexts, {DIM}-d, {VOCAB:,} words, "
          f"{STEPS} steps per launch; {os.cpu_count()} CPUs; median of {rounds} rounds")
    for name, rate in rates.items():
        print(f"{name:<10}{rate:>10.0f} steps/s{rate / rates['1 thread']:>8.2f}x")
    print(f"updates lost by the 2-thread runs: {lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
