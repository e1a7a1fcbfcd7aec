"""Ratio benchmarks for the core layers: BatchNorm and RNN(LSTMCell) against Keras' built-ins.

Each comparison times one training step (forward, backward, and for batch norm the moving
statistics update) of our layer and of the Keras layer with the same shapes, both wrapped
in the same `tf.function` (and, in the "xla" rows, both with `jit_compile=True`).

Run: `python -m benchmarks.bench_layers_core [--quick]`.

Note: on a GPU `keras.layers.LSTM` dispatches to the fused cuDNN kernel, which no cell run
step by step in `keras.layers.RNN` can match; on a CPU both run the same while loop.
"""

import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from layers.normalization import BatchNorm
from layers.recurrent import LSTMCell


def _time_pair_ms(step_a, step_b, args, warmup=3, repeats=9, inner=5):
    """Median milliseconds per call of two steps, timed alternately after warm-up.

    Alternating the samples exposes both sides to the same background load, which matters
    on a shared machine far more than the number of repeats.
    """
    for _ in range(warmup):
        float(step_a(*args))
        float(step_b(*args))
    samples = ([], [])
    for _ in range(repeats):
        for step, out in zip((step_a, step_b), samples):
            start = time.perf_counter()
            for _ in range(inner):
                result = step(*args)
            float(result)  # Blocks until the device has finished.
            out.append((time.perf_counter() - start) * 1000.0 / inner)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _train_step(layer, jit_compile):
    """A compiled step: loss = mean(layer(x)^2 * w), gradients w.r.t. inputs and weights."""

    @tf.function(jit_compile=jit_compile)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(tf.square(layer(x, training=True)) * w)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        return loss + sum(tf.reduce_sum(g) for g in grads) * 0.0

    return step


def _compare(name, ours, peer, peer_name, shape, target, jit_compile, quick):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    ours(x)
    peer(x)
    out_shape = tuple(ours(x).shape)
    w = tf.constant(rng.uniform(size=out_shape).astype("float32"))
    ours_ms, peer_ms = _time_pair_ms(
        _train_step(ours, jit_compile),
        _train_step(peer, jit_compile),
        (x, w),
        repeats=5 if quick else 9,
    )
    return {
        "name": name + (" [xla]" if jit_compile else ""),
        "ours_ms": round(ours_ms, 3),
        "peer": peer_name,
        "peer_ms": round(peer_ms, 3),
        "ratio": round(ours_ms / peer_ms, 3),
        "target": target,
    }


def run(quick: bool = False) -> list[dict]:
    """Runs the comparisons.

    Args:
        quick: Smaller shapes and fewer repeats, for a smoke run.

    Returns:
        One dict per comparison: name, ours_ms, peer, peer_ms, ratio (ours/peer), target.
    """
    bn_shape = (16, 16, 16, 32) if quick else (64, 32, 32, 64)
    lstm_shape = (16, 20, 16) if quick else (64, 50, 64)
    units = 32 if quick else 128
    results = []
    for jit in (False, True):
        results.append(
            _compare(
                f"BatchNorm train step {bn_shape}",
                BatchNorm(),
                keras.layers.BatchNormalization(),
                "keras.layers.BatchNormalization",
                bn_shape,
                1.1,
                jit,
                quick,
            )
        )
        results.append(
            _compare(
                f"RNN(LSTMCell({units})) fwd+bwd {lstm_shape}",
                keras.layers.RNN(LSTMCell(units), return_sequences=True),
                keras.layers.LSTM(units, return_sequences=True),
                "keras.layers.LSTM",
                lstm_shape,
                1.5,
                jit,
                quick,
            )
        )
    return results


def _print_table(results):
    header = f"{'name':55s} {'ours_ms':>9s} {'peer_ms':>9s} {'ratio':>7s} {'target':>7s}  peer"
    print(header)
    print("-" * len(header))
    for r in results:
        flag = "" if r["ratio"] <= r["target"] else "  (misses target)"
        print(
            f"{r['name']:55s} {r['ours_ms']:9.3f} {r['peer_ms']:9.3f} {r['ratio']:7.3f} "
            f"{r['target']:7.2f}  {r['peer']}{flag}"
        )


if __name__ == "__main__":
    print("device:", tf.config.list_logical_devices()[-1].name)
    _print_table(run(quick="--quick" in sys.argv[1:]))
