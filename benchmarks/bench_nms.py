"""NMS benchmark: layers.nms against TensorFlow's C++ kernels on CPU.

Boxes are uniform random: both corners of each box uniform in [0, 1]^2 (then ordered), scores
uniform in [0, 1], IoU threshold 0.5. Every callable is wrapped in `tf.function` the same way
(ours runs its selection loop under XLA inside it, which is how it ships), warmed up, then timed
over several repeats with the compared calls interleaved (so load drift on a shared box hits both
alike); the median wall time is reported, results synced with `.numpy()`.

    python -m benchmarks.bench_nms [--quick]
"""

import sys
import time

import numpy as np
import tensorflow as tf

from layers.nms import NonMaxSuppression, non_max_suppression


def _uniform_boxes(n, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    shape = (n,) if batch is None else (batch, n)
    corners = rng.uniform(size=shape + (2, 2)).astype("float32")
    boxes = np.concatenate([corners.min(-2), corners.max(-2)], -1)
    return tf.constant(boxes), tf.constant(rng.uniform(size=shape).astype("float32"))


def paired_median_ms(fns, args, repeats):
    """Median wall time (ms) of each fn, calls interleaved so load drift hits all alike.

    Each round starts one fn later than the last, so every fn runs equally often right after
    each other one: a fixed order would bill the cache misses a slow fn leaves behind to
    whichever fn always follows it.
    """
    for fn in fns:
        for _ in range(2):
            tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    times = [[] for _ in fns]
    for round_index in range(repeats):
        shift = round_index % len(fns)
        for k in list(range(shift, len(fns))) + list(range(shift)):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fns[k](*args))
            times[k].append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in times]


def _row(name, ours_ms, peer, peer_ms, target):
    return {
        "name": name,
        "ours_ms": round(ours_ms, 3),
        "peer": peer,
        "peer_ms": round(peer_ms, 3),
        "ratio": round(ours_ms / peer_ms, 3),
        "target": target,
    }


def run(quick: bool = False) -> list[dict]:
    """Times ours vs tf.image on single images and a batch; one dict per comparison."""
    repeats = 5 if quick else 20
    rows = []
    sizes = [1000, 5000] if quick else [1000, 5000, 20000]
    for n in sizes:
        boxes, scores = _uniform_boxes(n)
        for max_out in (100, n):
            ours = tf.function(lambda b, s, m=max_out: non_max_suppression(b, s, m, 0.5)[0])
            peer = tf.function(lambda b, s, m=max_out: tf.image.non_max_suppression(b, s, m, 0.5))
            ours_idx, peer_idx = ours(boxes, scores).numpy(), peer(boxes, scores).numpy()
            if not np.array_equal(ours_idx, peer_idx):
                raise AssertionError(f"NMS selections differ at N={n}, max_output_size={max_out}")
            ours_ms, peer_ms = paired_median_ms([ours, peer], (boxes, scores), repeats)
            rows.append(
                _row(
                    f"hard NMS N={n} max_out={max_out} ({len(peer_idx)} kept)",
                    ours_ms, "tf.image.non_max_suppression", peer_ms, 1.0,
                )
            )

    boxes, scores = _uniform_boxes(1000)
    ours = tf.function(
        lambda b, s: non_max_suppression(b, s, 100, 0.5, 0.0, soft_nms_sigma=0.5)[:2]
    )
    peer = tf.function(
        lambda b, s: tf.image.non_max_suppression_with_scores(b, s, 100, 0.5, 0.0, 0.5)
    )
    ours_ms, peer_ms = paired_median_ms([ours, peer], (boxes, scores), repeats)
    rows.append(
        _row("soft-NMS sigma=0.5 N=1000 max_out=100", ours_ms,
             "tf.image.non_max_suppression_with_scores", peer_ms, 1.0)
    )

    batch, n, max_out = 16, 1000, 100
    boxes, scores = _uniform_boxes(n, seed=1, batch=batch)
    layer = NonMaxSuppression(max_out, iou_threshold=0.5)
    ours = tf.function(lambda b, s: layer([b, s])[:3])

    def per_image_loop(b, s):
        return [tf.image.non_max_suppression(b[i], s[i], max_out, 0.5) for i in range(batch)]

    def combined(b, s):
        return tf.image.combined_non_max_suppression(
            b[:, :, None, :], s[:, :, None], max_out, max_out, 0.5, clip_boxes=False
        )[:3]

    ours_ms, loop_ms, combined_ms = paired_median_ms(
        [ours, tf.function(per_image_loop), tf.function(combined)], (boxes, scores), repeats
    )
    name = f"batched layer batch={batch} N={n} max_out={max_out}"
    rows.append(_row(name, ours_ms, "per-image loop of tf.image.non_max_suppression", loop_ms, 1.0))
    rows.append(
        _row(name, ours_ms, "tf.image.combined_non_max_suppression (reference)", combined_ms, None)
    )
    return rows


def _print_table(rows):
    header = f"{'name':<48} {'ours ms':>9} {'peer ms':>9} {'ratio':>7} {'target':>6}  peer"
    print(header)
    print("-" * len(header))
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:.1f}"
        print(
            f"{r['name']:<48} {r['ours_ms']:>9.3f} {r['peer_ms']:>9.3f} {r['ratio']:>7.3f} "
            f"{target:>6}  {r['peer']}"
        )


if __name__ == "__main__":
    _print_table(run(quick="--quick" in sys.argv))
