"""Tests of the NMS detection experiment: COCOeval wiring, boxes, NMS modes, export, replicas."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import detection_eval
from experiments import nms_detection as det
from experiments import runtime
from experiments.data import shape_scenes
from tests.experiments.helpers import run_experiment

SIZE = 100  # pixel side for the analytic COCOeval cases


def _evaluate(gt_boxes, det_boxes, det_scores):
    gt = detection_eval.coco_ground_truth(
        [1], [np.array(gt_boxes)], [np.zeros(len(gt_boxes), int)],
        [[(b[2] - b[0]) * (b[3] - b[1]) * SIZE * SIZE for b in gt_boxes]], 1, SIZE)
    n = len(det_boxes)
    dets = detection_eval.coco_detections([1], [np.array(det_boxes)], [np.array(det_scores)],
                                          [np.zeros(n, int)], [n], SIZE)
    return detection_eval.coco_evaluate(gt, dets)


def test_coco_perfect_detections_give_ap_1():
    boxes = [[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.8]]
    stats = _evaluate(boxes, boxes, [0.9, 0.8])
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_coco_single_detection_at_iou_072():
    # GT 50 x 50 px; the detection covers 50 x 36 of it: IoU = 1800 / 2500 = 0.72, so it
    # matches at IoU thresholds .50-.70 (5 of 10): AP 0.5, AP50 1, AP75 0.
    stats = _evaluate([[0.0, 0.0, 0.5, 0.5]], [[0.0, 0.0, 0.5, 0.36]], [0.9])
    assert stats["AP"] == pytest.approx(0.5)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)


def test_coco_higher_scored_false_positive_lowers_ap_by_hand_computed_amount():
    # Ranked TP (0.9), FP (0.8), TP (0.7) for 2 GTs: precision/recall (1, .5), (.5, .5),
    # (2/3, 1); interpolated precision is 1 for recall <= .5 (51 of COCO's 101 recall points)
    # and 2/3 above (50 points): AP = (51 + 50 * 2/3) / 101 at every IoU threshold.
    gt = [[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]]
    without_fp = _evaluate(gt, gt, [0.9, 0.7])
    with_fp = _evaluate(gt, [gt[0], [0.4, 0.0, 0.5, 0.1], gt[1]], [0.9, 0.8, 0.7])
    expected = (51 + 50 * 2 / 3) / 101
    assert without_fp["AP"] == pytest.approx(1.0)
    assert with_fp["AP"] == pytest.approx(expected)
    assert without_fp["AP"] - with_fp["AP"] == pytest.approx(1 - expected)


def test_coco_subsets_equal_separate_evaluations():
    # One COCOeval matching, accumulated per subset == one coco_evaluate per subset.
    rng = np.random.default_rng(3)
    ids, gts, dets = [], [], []
    for i in range(12):
        yx = rng.uniform(0, 0.6, (3, 2))
        g = np.concatenate([yx, yx + rng.uniform(0.1, 0.3, (3, 2))], 1)
        d = np.concatenate([g, g + rng.normal(0, 0.03, g.shape)])
        ids.append(i + 1), gts.append(g), dets.append(d)
    labels = [rng.integers(0, 2, 3) for _ in ids]
    gt = detection_eval.coco_ground_truth(
        ids, gts, labels, [np.full(3, 400.0)] * len(ids), 2, SIZE)
    results = detection_eval.coco_detections(
        ids, dets, [rng.uniform(0.1, 1, 6) for _ in ids],
        [np.concatenate([l, rng.integers(0, 2, 3)]) for l in labels], [6] * len(ids), SIZE)
    subsets = {"all": None, "some": [9, 2, 5, 7], "none": [12]}
    together = detection_eval.coco_evaluate_subsets(gt, results, subsets)
    for name, subset in subsets.items():
        alone = detection_eval.coco_evaluate(gt, results, subset)
        assert together[name].keys() == alone.keys()
        for key, value in alone.items():
            np.testing.assert_equal(together[name][key], value, err_msg=f"{name} {key}")


def test_box_encoding_round_trip():
    centres = det.cell_centres(64)
    rng = np.random.default_rng(0)
    d = rng.uniform(0.01, 0.4, (len(centres), 4)).astype(np.float32)
    boxes = np.stack([centres[:, 0] - d[:, 0], centres[:, 1] - d[:, 1],
                      centres[:, 0] + d[:, 2], centres[:, 1] + d[:, 3]], -1)
    raw = det.encode_boxes(tf.constant(boxes), centres, 64)
    np.testing.assert_allclose(det.decode_boxes(raw, centres, 64).numpy(), boxes, atol=1e-6)


def test_class_wise_nms_never_suppresses_across_classes():
    box = [0.1, 0.1, 0.5, 0.5]
    boxes = tf.constant([[box, box, [0.12, 0.1, 0.5, 0.5]]], tf.float32)
    # Three identical-ish boxes: class 0, class 1, and a class-0 duplicate.
    scores = tf.constant([[[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]]], tf.float32)
    classwise = det.DetectionPostprocess(2, max_detections=10)([boxes, scores])
    assert int(classwise[3][0]) == 2
    assert sorted(classwise[2][0, :2].numpy().tolist()) == [0, 1]
    agnostic = det.DetectionPostprocess(2, max_detections=10, class_agnostic=True)(
        [boxes, scores])
    assert int(agnostic[3][0]) == 1
    # Random candidates: class-wise equals tf.image.combined_non_max_suppression.
    rng = np.random.default_rng(1)
    yx = rng.uniform(0, 0.7, (2, 64, 2))
    b = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, (2, 64, 2))], -1).astype(np.float32)
    s = rng.uniform(0, 1, (2, 64, 3)).astype(np.float32)
    ours = det.DetectionPostprocess(3, max_detections=20)([tf.constant(b), tf.constant(s)])
    ref = tf.image.combined_non_max_suppression(b[:, :, None], s, 20, 20, 0.5, 0.05,
                                                clip_boxes=False)
    np.testing.assert_array_equal(ours[3].numpy(), ref.valid_detections.numpy())
    np.testing.assert_allclose(ours[1].numpy(), ref.nmsed_scores.numpy())
    np.testing.assert_allclose(ours[0].numpy(), ref.nmsed_boxes.numpy())
    np.testing.assert_array_equal(ours[2].numpy(), ref.nmsed_classes.numpy().astype(int))


def _scene_batch(n=4):
    config = shape_scenes.CONFIGS["tiny"]
    scenes = [shape_scenes.make_scene(config, "train", i) for i in range(n)]
    m = shape_scenes.MAX_OBJECTS
    batch = {"image": np.stack([s["image"] for s in scenes]),
             "boxes": np.zeros((n, m, 4), np.float32), "labels": np.zeros((n, m), np.int32),
             "valid": np.zeros((n, m), bool)}
    for i, s in enumerate(scenes):
        k = len(s["objects"]["label"])
        batch["boxes"][i, :k] = s["objects"]["bbox"]
        batch["labels"][i, :k] = s["objects"]["label"]
        batch["valid"][i, :k] = True
    return batch


def test_exported_model_equals_in_memory_pipeline(tmp_path):
    detector = det.build_detector(5, 64, 8, seed=3)
    batch = _scene_batch()
    exported = det.export_model(detector, 5, 64, max_detections=50, iou_threshold=0.5)
    path = str(tmp_path / "detector.keras")
    exported.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    out = reloaded(tf.cast(batch["image"], tf.float32))
    boxes, scores = det.raw_outputs(detector, batch["image"], 5, 64)
    ref = det.postprocess(boxes, scores, 5, max_detections=50)
    assert ref[3].sum() > 0  # something to compare
    for key, r in zip(("boxes", "scores", "classes", "num_detections"), ref):
        np.testing.assert_allclose(out[key].numpy(), r, atol=1e-5)


def test_task_loss_equal_on_one_device_and_two_replicas(mirrored_two_cpus):
    task = det.DetectionTask(5, 64, 8, 1e-3)
    batch = _scene_batch(4)
    with mirrored_two_cpus.scope():
        model = task.build_model()
    one_sum, one_weight = task.compute_loss(model, batch, training=True)
    dist = iter(runtime.distribute(mirrored_two_cpus,
                                   lambda: tf.data.Dataset.from_tensors(batch), 4))
    per_replica = mirrored_two_cpus.run(
        lambda b: task.compute_loss(model, b, training=True)[:2], args=(next(dist),))
    two_sum, two_weight = (float(mirrored_two_cpus.reduce("SUM", v, axis=None))
                           for v in per_replica)
    assert float(one_weight) > 0 and two_weight == float(one_weight)
    assert two_sum / two_weight == pytest.approx(float(one_sum) / float(one_weight), rel=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("nms_detection") / "run")
    results = det.EXPERIMENT.run_local(
        model_dir, quick=True, det_scenes="tiny", epochs=1, batch_size=8, det_width=8,
        det_map_every=1, det_iou_thresholds=["0.3", "0.5", "0.6", "0.8"],
        det_soft_sigmas=["0.25"], det_max_detections=20)
    return model_dir, results


def test_tiny_end_to_end_run(tiny_run):
    model_dir, results = tiny_run
    assert results["status"] == "completed"
    assert [c["verdict"] in ("confirmed", "refuted") for c in results["claims"]] == [True] * 4
    metrics = results["metrics"]
    assert metrics["export_max_abs_diff"] < 1e-5
    assert np.isfinite(metrics["train/train_loss"]) and metrics["train/train_loss"] > 0
    for key in ("all/no NMS/AP", "all/hard NMS IoU 0.5/AP", "all/soft-NMS sigma 0.25/AP"):
        assert 0.0 <= metrics[key] <= 1.0
    rows = results["data"]["postprocessing_sweep"]
    assert {r["post-processing"] for r in rows} >= {"no NMS", "hard NMS IoU 0.3",
                                                    "hard NMS IoU 0.8, class-agnostic",
                                                    "soft-NMS sigma 0.25"}
    # NMS never adds detections: after NMS 0.5 <= no NMS per image.
    by = {(r["post-processing"], r["scenes"]): r for r in rows}
    assert by["hard NMS IoU 0.5", "all"]["dets/image"] <= by["no NMS", "all"]["dets/image"]
    assert len(results["data"]["map_curve"]) == 1
    for name in ("map_vs_iou_threshold", "detections_per_image", "examples"):
        assert os.path.exists(os.path.join(model_dir, "plots", f"{name}.png"))
    assert os.path.exists(os.path.join(model_dir, "detector.keras"))


def test_predict_writes_png_and_bad_image_exits_2(tiny_run, tmp_path):
    from PIL import Image

    model_dir, _ = tiny_run
    image = tmp_path / "scene.png"
    Image.fromarray(_scene_batch(1)["image"][0]).save(image)
    out = det.predict(model_dir, str(image), str(tmp_path / "out.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    proc = run_experiment("experiments.nms_detection", f"--predict={bad}",
                          f"--model_dir={model_dir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the image" in lines[0], proc.stderr[-2000:]
