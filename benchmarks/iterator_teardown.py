"""How long deleting a tf.data iterator takes, with tf.data's autotuning on and off.

The runtime makes a new iterator every epoch and every evaluation. With autotuning on
(tf.data's default), the iterator's model thread re-plans at a period that doubles from
10 ms, and deleting the iterator while its consumer is busy waits out the current period.
This consumes a prefetched dataset with a busy XLA step for about `seconds` and times the
`del` that ends the epoch, with the default options and with the runtime's
(`inputs.untuned_options()`, autotuning off), alternating.

Run: `python -m benchmarks.iterator_teardown [--rounds=N]`. Measured on the 2-core box
(README, "GPUs, several GPUs, several machines"): after 1 / 2 / 4 s,
0.26 / 0.54 / 1.10 s with autotuning, 0.001 s without.
"""

import sys
import time

import numpy as np
import tensorflow as tf

from benchmarks import positive_int_flag
from experiments.runtime import inputs

LIFETIMES = (0.5, 1.0, 2.0, 4.0)  # seconds of consumption before the delete


def _busy_step():
    weights = tf.Variable(tf.random.stateless_normal((256, 256), seed=(0, 1)) / 16.0)

    @tf.function(jit_compile=True)
    def work(batch):
        y = weights
        for _ in range(8):
            y = tf.tanh(y @ weights)
        return tf.reduce_sum(y) + tf.cast(tf.reduce_sum(batch), tf.float32)

    @tf.function
    def step(iterator):
        element = iterator.get_next_as_optional()
        return work(element.get_value()) if element.has_value() else tf.constant(0.0)

    return step


def teardown_seconds(step, seconds, untuned):
    """Consumes a fresh iterator for ~`seconds`, then returns (steps, seconds of its `del`)."""
    data = np.zeros((1 << 16, 64), np.int32)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(32).repeat().prefetch(
        tf.data.AUTOTUNE)
    if untuned:
        dataset = dataset.with_options(inputs.untuned_options())
    iterator = iter(dataset)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(iterator).numpy()
        steps += 1
    start = time.perf_counter()
    del iterator
    return steps, time.perf_counter() - start


def main(argv):
    rounds = positive_int_flag(argv, "rounds", 3)
    step = _busy_step()
    teardown_seconds(step, 0.2, True)  # compile
    print(f"{'consumed (s)':>12}{'autotune on: del (s)':>24}{'off: del (s)':>16}")
    for seconds in LIFETIMES:
        times = {True: [], False: []}
        for r in range(rounds):
            for untuned in ((True, False) if r % 2 else (False, True)):
                times[untuned].append(teardown_seconds(step, seconds, untuned)[1])
        on, off = times[False], times[True]
        print(f"{seconds:>12.1f}{f'{np.median(on):.3f} (max {max(on):.3f})':>24}"
              f"{f'{np.median(off):.3f}':>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
