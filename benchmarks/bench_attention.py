"""Attention layers vs their keras built-ins: forward + backward step time.

Each step computes the layer output, a scalar loss (sum of squares) and the gradients with
respect to the inputs and the trainable weights, inside one `tf.function` (no XLA) for both
sides, on the same shapes. Timings are medians over repeats, ours and the peer interleaved (in
alternating order) so that load on a shared machine hits both alike.

    python -m benchmarks.bench_attention          # full shapes
    python -m benchmarks.bench_attention --quick  # small shapes, a few seconds
"""

import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from layers.attention import AdditiveAttention, DotProductAttention, SelfAttention  # noqa: E402

TARGET_RATIO = 1.1


def _step_fn(layer, call):
    """A compiled forward + backward step of `call(layer, inputs)`."""

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.square(call(layer, inputs)))
        return tape.gradient(loss, [inputs, layer.trainable_weights])

    return step


def _time(steps, inputs, repeats, iters):
    """Median milliseconds per step of each function in `steps`, interleaved."""
    for step in steps:  # trace + warm up
        for _ in range(3):
            step(inputs)
    samples = [[] for _ in steps]
    for repeat in range(repeats):
        # Alternate the order: whichever runs first in a round was measurably slower.
        order = range(len(steps)) if repeat % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            step = steps[i]
            start = time.perf_counter()
            for _ in range(iters):
                result = step(inputs)
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
            samples[i].append((time.perf_counter() - start) / iters * 1e3)
    return [statistics.median(s) for s in samples]


def _compare(name, ours, peer, peer_name, call_ours, call_peer, inputs, repeats, iters):
    ours_ms, peer_ms = _time(
        [_step_fn(ours, call_ours), _step_fn(peer, call_peer)], inputs, repeats, iters
    )
    return {
        "name": name,
        "ours_ms": round(ours_ms, 3),
        "peer": peer_name,
        "peer_ms": round(peer_ms, 3),
        "ratio": round(ours_ms / peer_ms, 3),
        "target": TARGET_RATIO,
    }


def run(quick: bool = False) -> list[dict]:
    """Runs the three comparisons and returns one result dict per comparison."""
    batch, length, dim = (8, 16, 32) if quick else (32, 64, 64)
    repeats, iters = (5, 5) if quick else (15, 10)
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=(batch, length, dim)).astype("float32"))
    value = tf.constant(rng.normal(size=(batch, length, dim)).astype("float32"))
    pair = [query, value]
    results = []

    def two_inputs(layer, inputs):
        return layer([inputs[0], inputs[1]])

    def self_attention(layer, x):
        return layer(x)

    def mha_self_attention(layer, x):
        return layer(x, x)

    ours, peer = DotProductAttention(use_scale=True), keras.layers.Attention(use_scale=True)
    ours(pair), peer(pair)
    results.append(_compare(
        f"DotProductAttention(use_scale=True) B={batch} T={length} d={dim}",
        ours, peer, "keras.layers.Attention(use_scale=True)", two_inputs, two_inputs, pair,
        repeats, iters,
    ))

    ours, peer = AdditiveAttention(projections=False), keras.layers.AdditiveAttention()
    ours(pair), peer(pair)
    results.append(_compare(
        f"AdditiveAttention(projections=False) B={batch} T={length} d={dim}",
        ours, peer, "keras.layers.AdditiveAttention", two_inputs, two_inputs, pair,
        repeats, iters,
    ))

    key_dim = dim
    ours = SelfAttention(key_dim=key_dim, num_heads=1)
    peer = keras.layers.MultiHeadAttention(num_heads=1, key_dim=key_dim)
    ours(query), peer(query, query)
    results.append(_compare(
        f"SelfAttention(key_dim={key_dim}, heads=1) B={batch} T={length} d={dim}",
        ours, peer, "keras.layers.MultiHeadAttention(num_heads=1)",
        self_attention, mha_self_attention, query, repeats, iters,
    ))
    return results


def _print_table(results):
    header = f"{'name':58s} {'ours_ms':>9s} {'peer_ms':>9s} {'ratio':>7s} {'target':>7s}  peer"
    print(header)
    print("-" * len(header))
    for r in results:
        flag = "" if r["ratio"] <= r["target"] else "  (misses target)"
        print(f"{r['name']:58s} {r['ours_ms']:9.3f} {r['peer_ms']:9.3f} {r['ratio']:7.3f} "
              f"{r['target']:7.2f}  {r['peer']}{flag}")


if __name__ == "__main__":
    _print_table(run(quick="--quick" in sys.argv[1:]))
