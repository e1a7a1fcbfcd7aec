"""Per-step time of our optimizers vs their Keras counterparts.

Each side updates its own copy of a ~1.05M-parameter MLP's variables (512x1024, 1024x512 and
biases) with fixed random gradients, one `apply_gradients` per call of a `tf.function`. Short
rounds of ours and the peer are interleaved so that load on a shared machine hits both alike;
the reported time is the fastest round's mean step time (the round least disturbed by other
processes; medians moved by +-20% between runs on a loaded 2-core box).

Run: `python -m benchmarks.bench_optimizers` (add `--quick` for a short run).
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from optimizers.adam import Adam, AdamW
from optimizers.rmsprop import RMSProp
from optimizers.sgd import SGD

TARGET_RATIO = 1.05
SHAPES = [(512, 1024), (1024,), (1024, 512), (512,)]

CASES = [
    ("SGD(momentum=0.9, ema)", lambda: SGD(0.01, momentum=0.9),
     "keras.optimizers.SGD(momentum=0.9)", lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
    ("SGD(momentum=0.9, classic)", lambda: SGD(0.01, momentum=0.9, momentum_form="classic"),
     "keras.optimizers.SGD(momentum=0.9)", lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
    ("RMSProp", lambda: RMSProp(0.001),
     "keras.optimizers.RMSprop", lambda: keras.optimizers.RMSprop(0.001)),
    ("Adam", lambda: Adam(0.001, epsilon=1e-7),
     "keras.optimizers.Adam", lambda: keras.optimizers.Adam(0.001, epsilon=1e-7)),
    ("AdamW", lambda: AdamW(0.001, weight_decay=0.004, epsilon=1e-7),
     "keras.optimizers.AdamW",
     lambda: keras.optimizers.AdamW(0.001, weight_decay=0.004, epsilon=1e-7)),
]


def _make_stepper(optimizer, seed):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(scale=0.02, size=s).astype("float32")) for s in SHAPES]
    grads = [tf.constant(rng.normal(scale=1e-3, size=s).astype("float32")) for s in SHAPES]
    optimizer.build(variables)

    @tf.function
    def step():
        optimizer.apply_gradients(zip(grads, variables))
        return variables[0][0, 0]

    step()  # trace + warm up
    return step


def _round_ms(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        last = step()
    float(last)  # waits for the device (GPU calls are asynchronous)
    return (time.perf_counter() - start) * 1e3 / steps


def run(quick: bool = False) -> list[dict]:
    """Times each (ours, peer) pair; returns one dict per comparison.

    Args:
        quick: Fewer and shorter rounds (for smoke runs), less precise.

    Returns:
        Dicts with keys name, ours_ms, peer, peer_ms, ratio, target.
    """
    rounds, steps = (5, 40) if quick else (25, 50)
    results = []
    for name, ours_factory, peer_name, peer_factory in CASES:
        ours_step = _make_stepper(ours_factory(), seed=0)
        peer_step = _make_stepper(peer_factory(), seed=0)
        for stepper in (ours_step, peer_step):
            _round_ms(stepper, steps // 5)
        ours_times, peer_times = [], []
        for _ in range(rounds):
            ours_times.append(_round_ms(ours_step, steps))
            peer_times.append(_round_ms(peer_step, steps))
        ours_ms = min(ours_times)
        peer_ms = min(peer_times)
        results.append(
            {
                "name": f"optimizers.{name}",
                "ours_ms": round(ours_ms, 4),
                "peer": peer_name,
                "peer_ms": round(peer_ms, 4),
                "ratio": round(ours_ms / peer_ms, 3),
                "target": TARGET_RATIO,
            }
        )
    return results


def main():
    quick = "--quick" in sys.argv[1:]
    params = sum(int(np.prod(s)) for s in SHAPES)
    print(f"apply_gradients per step, {params:,} parameters, tf.function, "
          f"device {tf.config.list_logical_devices()[0].device_type}")
    print(f"{'ours':34s} {'ours ms':>9s} {'peer':36s} {'peer ms':>9s} {'ratio':>6s} {'target':>6s}")
    for row in run(quick=quick):
        print(f"{row['name']:34s} {row['ours_ms']:9.3f} {row['peer']:36s} {row['peer_ms']:9.3f} "
              f"{row['ratio']:6.3f} {row['target']:6.2f}")


if __name__ == "__main__":
    main()
