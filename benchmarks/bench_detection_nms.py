"""Detection post-processing benchmark on a trained detector's real outputs (not random boxes).

Inputs: the raw decoded candidates of `experiments.nms_detection` (FCOS-lite on shape scenes,
(S/4)^2 cells x 5 classes per image), read from a finished run's `raw_outputs.npz`
(`--raw=<model_dir>/raw_outputs.npz`), else from a tiny detector trained here inline (shape
scenes "tiny", 3 epochs: weaker, but real decoded outputs with their clustered overlaps).

Compared per batch of images, class-wise hard NMS IoU 0.5, score > 0.05, 100 per image:
the suite's `DetectionPostprocess` (layers.nms.NonMaxSuppression over every (image, class),
then the top 100) vs `tf.image.combined_non_max_suppression` (same semantics) vs keras-hub's
`NonMaxSuppression` (class-agnostic by design; reported "not installed" when keras_hub is
absent). Every callable is a `tf.function`, warmed up, timed interleaved (median); the suite's
selected boxes, scores and classes are checked identical to tf.image's.

    python -m benchmarks.bench_detection_nms [--quick] [--raw=PATH]
"""

import importlib.util
import sys

import numpy as np
import tensorflow as tf

from benchmarks.bench_nms import paired_median_ms


def _raw_candidates(path):
    if path:
        data = np.load(path)
        return data["boxes"], data["scores"], f"{path}"
    import tempfile

    from experiments import nms_detection as det

    with tempfile.TemporaryDirectory() as tmp:
        det.EXPERIMENT.run_local(tmp, quick=True, det_scenes="tiny", epochs=3, batch_size=8,
                                 det_width=16, det_iou_thresholds=["0.5"], det_soft_sigmas=[])
        data = np.load(f"{tmp}/raw_outputs.npz")
        return data["boxes"], data["scores"], "tiny detector trained inline (3 epochs)"


def run(quick=False, raw=None):
    from experiments.nms_detection import DetectionPostprocess

    boxes, scores, source = _raw_candidates(raw)
    num_classes = scores.shape[-1]
    ours_layer = DetectionPostprocess(num_classes, max_detections=100, iou_threshold=0.5)
    ours = tf.function(lambda b, s: ours_layer([b, s]))
    tf_image = tf.function(lambda b, s: tf.image.combined_non_max_suppression(
        b[:, :, None], s, 100, 100, 0.5, 0.05, clip_boxes=False))
    rows = []
    batches = [8, 64] if quick else [1, 8, 64, 256]
    for batch in batches:
        b = tf.constant(boxes[:batch])
        s = tf.constant(scores[:batch])
        mine, ref = ours(b, s), tf_image(b, s)
        identical = (np.array_equal(mine[3].numpy(), ref.valid_detections.numpy())
                     and np.array_equal(mine[0].numpy(), ref.nmsed_boxes.numpy())
                     and np.array_equal(mine[1].numpy(), ref.nmsed_scores.numpy())
                     and np.array_equal(mine[2].numpy(), ref.nmsed_classes.numpy().astype(int)))
        ours_ms, tf_ms = paired_median_ms([ours, tf_image], (b, s), 5 if quick else 20)
        rows.append({"batch": int(b.shape[0]), "candidates/image": boxes.shape[1] * num_classes,
                     "ours_ms": ours_ms, "tf_image_ms": tf_ms, "ratio": ours_ms / tf_ms,
                     "identical": identical,
                     "keras_hub": ("installed (not timed: class-agnostic)"
                                   if importlib.util.find_spec("keras_hub") else
                                   "not installed")})
    return source, rows


def main():
    raw = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--raw=")), None)
    source, rows = run(quick="--quick" in sys.argv, raw=raw)
    print(f"inputs: {source}")
    print(f"{'batch':>5} {'cand/img':>9} {'ours ms':>9} {'tf.image ms':>12} {'ratio':>7} "
          f"{'identical':>9}  keras-hub NonMaxSuppression")
    for r in rows:
        print(f"{r['batch']:>5} {r['candidates/image']:>9} {r['ours_ms']:>9.2f} "
              f"{r['tf_image_ms']:>12.2f} {r['ratio']:>6.2f}x {str(r['identical']):>9}  "
              f"{r['keras_hub']}")
    print("target: ratio <= 1.0 against the fastest installed peer")


if __name__ == "__main__":
    main()
