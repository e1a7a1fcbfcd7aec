"""Detection post-processing benchmark on a trained detector's real outputs (not random boxes).

Inputs: the raw decoded candidates of `experiments.nms_detection` (FCOS-lite on shape scenes,
(S/4)^2 cells x 5 classes per image), read from a finished run's `raw_outputs.npz`
(`--raw=<model_dir>/raw_outputs.npz`), else from a tiny detector trained here inline (shape
scenes "tiny", 3 epochs: weaker, but real decoded outputs with their clustered overlaps).

Compared per batch of images, hard NMS IoU 0.5, score > 0.05, 100 per image:

- class-wise: the suite's `DetectionPostprocess` (layers.nms.multiclass_non_max_suppression:
  live boxes compacted, then argmax-and-suppress in score order) vs
  `tf.image.combined_non_max_suppression` (same semantics; its selected boxes, scores and
  classes must be identical to ours);
- class-agnostic (each box's best class, one NMS per image): `DetectionPostprocess(
  class_agnostic=True)` vs keras-hub's `keras_hub.layers.NonMaxSuppression`, which only does
  that; an optional peer, skipped with a printed line when keras_hub is not installed.

Every callable is a `tf.function`, warmed up, then timed against its peer with the two calls
interleaved in alternating order (`bench_nms.paired_median_ms`, median of `--repeats` rounds)
so that load drift on a shared box hits both alike; the 1-minute load average is printed. The
target: ours <= 1.0x the fastest peer doing the same job.

Also printed, apart from the ratio: ours inside the caller's own XLA program
(`tf.function(jit_compile=True)`, as Keras compiles `predict` with `jit_compile="auto"` where
there is a GPU), timed against tf.image in a pair of its own. tf.image's combined kernel has
no XLA lowering, so it cannot run there at all: a plain `tf.function` is its only mode. And a
floor: a `jit_compile` function that reads the same inputs and returns zeros of the outputs'
shapes, called from a plain `tf.function` as ours is: what any XLA program costs there before
doing any work, against tf.image's whole NMS.

The table is printed twice, each from a process of its own (XLA reads `XLA_FLAGS` once per
process): with XLA's default flags, and with small loops hoisted into one kernel
(`layers.nms.hoist_small_xla_cpu_loops`, as `experiments.nms_detection` runs).
`--xla_loop_hoisting=off|on` prints one of the two.

    python -m benchmarks.bench_detection_nms [--quick] [--raw=PATH] [--repeats=N]
        [--xla_loop_hoisting=both|off|on]
"""

import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from benchmarks import positive_int_flag
from benchmarks.bench_nms import paired_median_ms
from layers.nms import hoist_small_xla_cpu_loops


def _raw_candidates(path):
    if path:
        data = np.load(path)
        return data["boxes"], data["scores"], f"{path}"
    from experiments import nms_detection as det

    with tempfile.TemporaryDirectory() as tmp:
        det.EXPERIMENT.run_local(tmp, quick=True, det_scenes="tiny", epochs=3, batch_size=8,
                                 det_width=16, det_iou_thresholds=["0.5"], det_soft_sigmas=[])
        data = np.load(f"{tmp}/raw_outputs.npz")
        return data["boxes"], data["scores"], "tiny detector trained inline (3 epochs)"


def _keras_hub_nms():
    """keras-hub's NonMaxSuppression class (class-agnostic), or None when not installed."""
    if importlib.util.find_spec("keras_hub") is None:
        return None
    import keras_hub

    return keras_hub.layers.NonMaxSuppression


def _no_nms_program(max_detections):
    """A plain `tf.function` calling a `jit_compile` one that reads the boxes and scores and
    returns zeros shaped like `DetectionPostprocess`'s outputs: the floor of any XLA program."""

    @tf.function(jit_compile=True)
    def no_nms(boxes, scores):
        batch = tf.shape(scores)[0]
        touch = 0.0 * (tf.reduce_max(boxes) + tf.reduce_max(scores))
        return (tf.zeros([batch, max_detections, 4]) + touch,
                tf.zeros([batch, max_detections]) + touch,
                tf.zeros([batch, max_detections], tf.int32), tf.zeros([batch], tf.int32))

    return tf.function(lambda b, s: no_nms(b, s))


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def _same_detections(ours, hub):
    """Our class-agnostic outputs vs keras-hub's: same counts, boxes and labels (keras-hub pads
    with -1, so only the valid detections are compared)."""
    count = ours[3].numpy()
    valid = np.arange(ours[2].shape[1])[None] < count[:, None]
    return bool(np.array_equal(count, hub["num_detections"].numpy())
                and np.array_equal(np.where(valid[..., None], ours[0], 0),
                                   np.where(valid[..., None], hub["boxes"], 0))
                and np.array_equal(np.where(valid, ours[2], 0), np.where(valid, hub["labels"], 0)))


def run(quick=False, raw=None, repeats=None):
    from experiments.nms_detection import DetectionPostprocess

    boxes, scores, source = _raw_candidates(raw)
    num_classes = scores.shape[-1]
    repeats = repeats or (5 if quick else 20)
    ours_layer = DetectionPostprocess(num_classes, max_detections=100, iou_threshold=0.5)
    ours = tf.function(lambda b, s: ours_layer([b, s]))
    ours_xla = tf.function(lambda b, s: ours_layer([b, s]), jit_compile=True)
    tf_image = tf.function(lambda b, s: tf.image.combined_non_max_suppression(
        b[:, :, None], s, 100, 100, 0.5, 0.05, clip_boxes=False))
    floor = _no_nms_program(100)
    hub_cls = _keras_hub_nms()
    if hub_cls is not None:
        agnostic_layer = DetectionPostprocess(num_classes, max_detections=100, iou_threshold=0.5,
                                              class_agnostic=True)
        agnostic = tf.function(lambda b, s: agnostic_layer([b, s]))
        hub_layer = hub_cls(bounding_box_format="yxyx", from_logits=False, iou_threshold=0.5,
                            confidence_threshold=0.05, max_detections=100)
        hub = tf.function(lambda b, s: hub_layer(b, s))
    rows = []
    batches = [8, 64] if quick else [1, 8, 64, 256]
    for batch in batches:
        b = tf.constant(boxes[:batch])
        s = tf.constant(scores[:batch])
        mine, ref = ours(b, s), tf_image(b, s)
        ref = (ref.nmsed_boxes, ref.nmsed_scores, tf.cast(ref.nmsed_classes, tf.int32),
               ref.valid_detections)
        row = {"batch": int(b.shape[0]), "candidates/image": boxes.shape[1] * num_classes,
               "live/image": float((scores[:batch] > 0.05).sum(axis=(1, 2)).mean()),
               "identical": _same(mine, ref) and _same(ours_xla(b, s), ref)}
        if hub_cls is not None:
            a = agnostic(b, s)
            # keras-hub's selections under tf.function differ from its own eager ones (Grappler's
            # graph rewrites change its float results; without Grappler they agree), so both
            # are checked against ours.
            row["hub_identical"] = _same_detections(a, hub(b, s))
            row["hub_eager_identical"] = _same_detections(a, hub_layer(b, s))
        # Each pair is timed on its own: keras-hub's slow calls would otherwise slow down the
        # calls interleaved with them.
        times = paired_median_ms([ours, tf_image], (b, s), repeats)
        row.update(ours_ms=times[0], tf_image_ms=times[1], ratio=times[0] / times[1])
        xla_times = paired_median_ms([ours_xla, tf_image], (b, s), repeats)
        row.update(ours_xla_ms=xla_times[0], xla_ratio=xla_times[0] / xla_times[1])
        floor_times = paired_median_ms([floor, tf_image], (b, s), repeats)
        row.update(floor_ms=floor_times[0], floor_ratio=floor_times[0] / floor_times[1])
        if hub_cls is not None:
            times += paired_median_ms([agnostic, hub], (b, s), repeats)
            row.update(agnostic_ms=times[2], hub_ms=times[3], hub_ratio=times[2] / times[3],
                       ratio_vs_fastest=times[0] / min(times[1], times[3]))
        rows.append(row)
    return source, rows, hub_cls is not None


def _print_table(source, rows, hub):
    print(f"inputs: {source}; 1-minute load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("class-wise: ours = DetectionPostprocess, peer = tf.image.combined_non_max_suppression")
    print(f"{'batch':>5} {'cand/img':>9} {'live/img':>8} {'ours ms':>9} {'tf.image ms':>12} "
          f"{'ratio':>7} {'identical':>9} {'ours in XLA caller ms':>22} {'vs tf.image':>12} "
          f"{'no-NMS XLA floor ms':>20} {'vs tf.image':>12}")
    for r in rows:
        print(f"{r['batch']:>5} {r['candidates/image']:>9} {r['live/image']:>8.1f} "
              f"{r['ours_ms']:>9.2f} {r['tf_image_ms']:>12.2f} {r['ratio']:>6.2f}x "
              f"{str(r['identical']):>9} {r['ours_xla_ms']:>22.2f} {r['xla_ratio']:>11.2f}x "
              f"{r['floor_ms']:>20.2f} {r['floor_ratio']:>11.2f}x")
    if not hub:
        print("keras-hub NonMaxSuppression: skipped (keras_hub not installed; "
              "pip install keras-hub)")
    else:
        print("class-agnostic: ours = DetectionPostprocess(class_agnostic=True), peer = "
              "keras_hub.layers.NonMaxSuppression")
        print(f"{'batch':>5} {'ours ms':>9} {'keras-hub ms':>13} {'ratio':>7} {'identical':>9} "
              f"{'(eager)':>8} {'class-wise ours / fastest peer':>31}")
        for r in rows:
            print(f"{r['batch']:>5} {r['agnostic_ms']:>9.2f} {r['hub_ms']:>13.2f} "
                  f"{r['hub_ratio']:>6.2f}x {str(r['hub_identical']):>9} "
                  f"{str(r['hub_eager_identical']):>8} {r['ratio_vs_fastest']:>30.2f}x")
    print("target: ratio <= 1.0 against the fastest installed peer doing the same job")


def _both_settings(argv, raw):
    """Runs this benchmark once per XLA setting, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        if raw is None:  # train the tiny detector once, for both processes
            boxes, scores, _ = _raw_candidates(None)
            raw = os.path.join(tmp, "raw_outputs.npz")
            np.savez(raw, boxes=boxes, scores=scores)
        passed = [a for a in argv if not a.startswith(("--raw=", "--xla_loop_hoisting="))]
        for setting, title in (("off", "XLA's default flags"),
                               ("on", "small XLA loops hoisted into one kernel")):
            print(f"== {title} (--xla_loop_hoisting={setting})", flush=True)
            code = subprocess.call([sys.executable, "-m", "benchmarks.bench_detection_nms",
                                    f"--raw={raw}", f"--xla_loop_hoisting={setting}", *passed])
            if code:
                return code
    return 0


def main():
    argv = sys.argv[1:]
    args = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    repeats = positive_int_flag(argv, "repeats", None)
    hoisting = args.get("xla_loop_hoisting", "both")
    if hoisting not in ("both", "off", "on"):
        sys.exit(f"--xla_loop_hoisting must be both, off or on, got {hoisting!r}")
    if hoisting == "both":
        return _both_settings(argv, args.get("raw"))
    if hoisting == "on":
        hoist_small_xla_cpu_loops()
    _print_table(*run(quick="--quick" in argv, raw=args.get("raw"), repeats=repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
