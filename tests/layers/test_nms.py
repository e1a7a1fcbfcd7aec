"""Tests for layers.nms: selections must equal tf.image's C++ kernels, index for index."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.nms import (
    NonMaxSuppression,
    batched_non_max_suppression,
    multiclass_non_max_suppression,
    non_max_suppression,
)
from layers import nms as nms_module
from tests.layer_testing import run_layer_test


def _boxes(rng, n, kind):
    if kind == "large":  # corners uniform in [0, 1]: heavy overlap, many suppressions
        return rng.uniform(size=(n, 4)).astype("float32")  # corners in either order
    yx = rng.uniform(size=(n, 2))
    hw = rng.uniform(0.0, 0.2, size=(n, 2))
    return np.concatenate([yx, yx + hw], 1).astype("float32")


def _case(seed, n, kind="large"):
    rng = np.random.default_rng(seed)
    return _boxes(rng, n, kind), rng.uniform(size=n).astype("float32")


def _reference(boxes, scores, max_out, iou, score_thr=-math.inf):
    return tf.image.non_max_suppression(boxes, scores, max_out, iou, score_thr).numpy()


RANDOM_CASES = [
    (seed, n, kind, iou, score_thr, max_out)
    for seed, n, kind in [(0, 1, "large"), (1, 37, "small"), (2, 150, "large"),
                          (3, 300, "small"), (4, 500, "large"), (5, 500, "small")]
    for iou, score_thr, max_out in [(0.3, -math.inf, 1000), (0.5, 0.3, 20), (0.7, 0.0, 7)]
]


@pytest.mark.parametrize("seed,n,kind,iou,score_thr,max_out", RANDOM_CASES)
def test_matches_tf_image_eager(seed, n, kind, iou, score_thr, max_out):
    boxes, scores = _case(seed, n, kind)
    indices, selected, count = non_max_suppression(boxes, scores, max_out, iou, score_thr)
    expected = _reference(boxes, scores, max_out, iou, score_thr)
    np.testing.assert_array_equal(indices.numpy(), expected)
    np.testing.assert_array_equal(selected.numpy(), scores[expected])
    assert int(count) == len(expected)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_matches_tf_image_inside_tf_function(jit_compile):
    ours = tf.function(
        lambda b, s, thr: non_max_suppression(b, s, 50, thr, 0.1, jit_compile=jit_compile)[0]
    )
    theirs = tf.function(lambda b, s, thr: tf.image.non_max_suppression(b, s, 50, thr, 0.1))
    for seed, (n, kind) in enumerate([(200, "large"), (200, "small"), (480, "large")]):
        boxes, scores = _case(10 + seed, n, kind)
        for thr in (0.3, 0.5, 0.7):
            np.testing.assert_array_equal(
                ours(boxes, scores, tf.constant(thr)).numpy(),
                theirs(boxes, scores, tf.constant(thr)).numpy(),
            )


def test_matches_tf_image_under_callers_jit_compile():
    ours = tf.function(
        lambda b, s: non_max_suppression(b, s, 64, 0.5, pad_to_max_output_size=True),
        jit_compile=True,
    )
    for seed, kind in enumerate(["large", "small"]):
        boxes, scores = _case(20 + seed, 300, kind)
        indices, selected, count = ours(boxes, scores)
        expected = _reference(boxes, scores, 64, 0.5)
        assert indices.shape == (64,) and int(count) == len(expected)
        np.testing.assert_array_equal(indices.numpy()[: len(expected)], expected)
        np.testing.assert_array_equal(indices.numpy()[len(expected):], 0)


def test_two_stage_sort_resumes_correctly():
    # Identical boxes: each score level keeps one box, so the first sorted stage (a prefix of
    # 2 * max_output_size scores) runs dry and the full sort must take over where it stopped.
    rng = np.random.default_rng(7)
    groups = rng.uniform(0.0, 10.0, size=(40, 2)).astype("float32")
    centers = np.repeat(groups, 25, axis=0)
    boxes = np.concatenate([centers, centers + 0.5], 1)
    scores = rng.uniform(size=len(boxes)).astype("float32")
    for max_out in (10, 40):
        expected = _reference(boxes, scores, max_out, 0.5)
        np.testing.assert_array_equal(
            non_max_suppression(boxes, scores, max_out, 0.5)[0].numpy(), expected
        )


def test_exact_score_ties_keep_lower_index_first():
    rng = np.random.default_rng(8)
    boxes = _boxes(rng, 200, "large")
    scores = (rng.integers(0, 4, size=200) / 4).astype("float32")  # 4 distinct values
    for iou in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(
            non_max_suppression(boxes, scores, 200, iou)[0].numpy(),
            _reference(boxes, scores, 200, iou),
        )
    same = np.full(200, 0.5, "float32")
    np.testing.assert_array_equal(
        non_max_suppression(boxes, same, 200, 0.5)[0].numpy(), _reference(boxes, same, 200, 0.5)
    )


def test_iou_exactly_at_threshold_is_kept():
    # IoU(box 0, box 1) = 2 / (3 + 3 - 2) = 0.5 exactly in float32; box 2 has IoU 1 with box 0.
    boxes = np.array([[0, 0, 1, 3], [0, 1, 1, 4], [0, 0, 1, 3]], "float32")
    scores = np.array([0.9, 0.8, 0.7], "float32")
    for iou, expected in [(0.5, [0, 1]), (np.nextafter(np.float32(0.5), 0), [0]), (1.0, [0, 1, 2])]:
        np.testing.assert_array_equal(_reference(boxes, scores, 10, iou), expected)
        np.testing.assert_array_equal(non_max_suppression(boxes, scores, 10, iou)[0], expected)


def test_zero_area_boxes_never_suppress():
    boxes = np.array(
        [[0, 0, 0, 1], [0, 0, 0, 1], [0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1], [0, 0, 1, 1]], "float32"
    )
    scores = np.array([0.5, 0.5, 0.5, 0.4, 0.3], "float32")
    expected = _reference(boxes, scores, 10, 0.0)
    np.testing.assert_array_equal(expected, [0, 1, 2, 3])
    np.testing.assert_array_equal(non_max_suppression(boxes, scores, 10, 0.0)[0], expected)


def test_edge_cases_empty_all_suppressed_and_truncated():
    empty, count = non_max_suppression(np.zeros((0, 4), "float32"), np.zeros(0, "float32"), 5)[::2]
    assert empty.shape == (0,) and int(count) == 0
    boxes = np.tile(np.array([[0, 0, 1, 1]], "float32"), (30, 1))
    scores = np.linspace(0.1, 0.9, 30).astype("float32")
    np.testing.assert_array_equal(non_max_suppression(boxes, scores, 10)[0], [29])  # one survivor
    assert non_max_suppression(boxes, scores, 0)[0].shape == (0,)
    assert non_max_suppression(boxes, scores, 10, 0.5, 0.95)[0].shape == (0,)  # none passes
    boxes, scores = _case(9, 300, "small")
    full = _reference(boxes, scores, 300, 0.5)
    assert len(full) > 5
    np.testing.assert_array_equal(non_max_suppression(boxes, scores, 5)[0], full[:5])


def test_padded_output_matches_tf_padded_kernel():
    # The C++ kernel with padding (NonMaxSuppressionV4). tf.image.non_max_suppression_padded is a
    # different, tiled algorithm that (TF 2.21) disagrees with the kernel on flipped corners.
    boxes, scores = _case(11, 120, "large")
    indices, selected, count = non_max_suppression(
        boxes, scores, 110, 0.5, pad_to_max_output_size=True
    )
    expected, valid = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes, scores=scores, max_output_size=110, iou_threshold=0.5,
        score_threshold=-math.inf, pad_to_max_output_size=True,
    )
    assert int(count) == int(valid) < 110 and indices.shape == (110,)
    np.testing.assert_array_equal(indices.numpy(), expected.numpy())
    np.testing.assert_array_equal(selected.numpy()[int(count):], 0.0)


@pytest.mark.parametrize(
    "seed,n,kind,sigma,score_thr,max_out",
    [(0, 150, "large", 0.5, 0.05, 150), (1, 300, "small", 0.1, 0.2, 60),
     (2, 80, "large", 0.3, -math.inf, 80), (3, 400, "large", 1.0, 0.3, 100)],
)
def test_soft_nms_matches_tf_with_scores(seed, n, kind, sigma, score_thr, max_out):
    boxes, scores = _case(seed, n, kind)
    ref_idx, ref_scores = tf.image.non_max_suppression_with_scores(
        boxes, scores, max_out, 0.5, score_thr, sigma
    )
    for iou in (0.5, 0.9):  # iou_threshold plays no part in soft-NMS, in TF nor here
        indices, selected, count = non_max_suppression(
            boxes, scores, max_out, iou, score_thr, sigma
        )
        np.testing.assert_array_equal(indices.numpy(), ref_idx.numpy())
        np.testing.assert_allclose(selected.numpy(), ref_scores.numpy(), atol=1e-6)
        assert int(count) == len(ref_idx)


def test_soft_nms_with_score_ties_inside_tf_function():
    boxes, scores = _case(12, 200, "large")
    scores = (np.round(scores * 4) / 4).astype("float32")
    ours = tf.function(lambda b, s: non_max_suppression(b, s, 100, 0.5, 0.1, 0.4)[:2])
    ref_idx, ref_scores = tf.image.non_max_suppression_with_scores(
        boxes, scores, 100, 0.5, 0.1, 0.4
    )
    indices, selected = ours(boxes, scores)
    np.testing.assert_array_equal(indices.numpy(), ref_idx.numpy())
    np.testing.assert_allclose(selected.numpy(), ref_scores.numpy(), atol=1e-6)


def _per_image_reference(boxes, scores, max_out, iou, score_thr):
    return [_reference(b, s, max_out, iou, score_thr) for b, s in zip(boxes, scores)]


@pytest.mark.parametrize("jit_compile", [True, False])
def test_batched_layer_equals_per_image_loop(jit_compile):
    rng = np.random.default_rng(13)
    boxes = np.stack([_boxes(rng, 256, kind) for kind in ["large", "small"] * 3])
    scores = rng.uniform(size=(6, 256)).astype("float32")
    layer = NonMaxSuppression(40, iou_threshold=0.4, score_threshold=0.2, jit_compile=jit_compile)
    indices, selected, counts, selected_boxes = (t.numpy() for t in layer([boxes, scores]))
    assert indices.shape == (6, 40) and selected_boxes.shape == (6, 40, 4)
    for k, expected in enumerate(_per_image_reference(boxes, scores, 40, 0.4, 0.2)):
        n = len(expected)
        assert counts[k] == n
        np.testing.assert_array_equal(indices[k, :n], expected)
        np.testing.assert_array_equal(selected[k, :n], scores[k, expected])
        np.testing.assert_array_equal(selected_boxes[k, :n], boxes[k, expected])
        np.testing.assert_array_equal(indices[k, n:], 0)
        np.testing.assert_array_equal(selected_boxes[k, n:], 0.0)


def test_batched_soft_nms_equals_per_image_loop():
    rng = np.random.default_rng(14)
    boxes = np.stack([_boxes(rng, 100, "large") for _ in range(3)])
    scores = rng.uniform(size=(3, 100)).astype("float32")
    indices, selected, counts, _ = batched_non_max_suppression(boxes, scores, 30, 0.5, 0.1, 0.5)
    for k in range(3):
        ref_idx, ref_scores = tf.image.non_max_suppression_with_scores(
            boxes[k], scores[k], 30, 0.5, 0.1, 0.5
        )
        n = len(ref_idx)
        assert int(counts[k]) == n
        np.testing.assert_array_equal(indices[k, :n].numpy(), ref_idx.numpy())
        np.testing.assert_allclose(selected[k, :n].numpy(), ref_scores.numpy(), atol=1e-6)


def test_layer_in_functional_model_predict():
    boxes, scores = _case(15, 64, "large")
    boxes_in, scores_in = keras.Input((64, 4)), keras.Input((64,))
    outputs = NonMaxSuppression(10, iou_threshold=0.5)([boxes_in, scores_in])
    model = keras.Model([boxes_in, scores_in], outputs)
    batch = [np.stack([boxes] * 4), np.stack([scores] * 4)]
    indices, _, counts, _ = model.predict(batch, verbose=0)
    expected = _reference(boxes, scores, 10, 0.5)
    for k in range(4):
        np.testing.assert_array_equal(indices[k, : counts[k]], expected)


def test_run_layer_test():
    rng = np.random.default_rng(16)
    boxes = np.stack([_boxes(rng, 32, "large") for _ in range(2)])
    scores = rng.uniform(size=(2, 32)).astype("float32")
    run_layer_test(
        NonMaxSuppression,
        {"max_output_size": 8, "iou_threshold": 0.6, "score_threshold": 0.1, "soft_nms_sigma": 0.0},
        [boxes, scores],
        expected_output_shape=[(2, 8), (2, 8), (2,), (2, 8, 4)],
        expected_num_trainable_weights=0,
        expect_trainable_change=False,
    )


def test_config_round_trip_and_validation():
    layer = NonMaxSuppression(5, iou_threshold=0.3, score_threshold=0.2, soft_nms_sigma=0.5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, NonMaxSuppression) and clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="max_output_size"):
        NonMaxSuppression(-1)
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        NonMaxSuppression(5, soft_nms_sigma=-0.1)
    with pytest.raises(ValueError, match="iou_threshold"):
        NonMaxSuppression(5, iou_threshold=1.2)
    with pytest.raises(ValueError, match="iou_threshold"):
        non_max_suppression(np.zeros((3, 4), "float32"), np.zeros(3, "float32"), 2, 1.5)


def test_traced_max_output_size_and_thresholds():
    # A traced max_output_size gives outputs sized N (as it cannot be known), valid prefix equal.
    ours = tf.function(
        lambda b, s, m, t: non_max_suppression(b, s, m, t, pad_to_max_output_size=True)[::2]
    )
    boxes, scores = _case(17, 90, "large")
    for max_out, thr in [(5, 0.5), (90, 0.3)]:
        indices, count = ours(boxes, scores, tf.constant(max_out), tf.constant(thr))
        expected = _reference(boxes, scores, max_out, thr)
        assert indices.shape == (90,) and int(count) == len(expected)
        np.testing.assert_array_equal(indices.numpy()[: len(expected)], expected)


# ----------------------------------------------------------------------------- class-aware NMS
def _per_class_reference(boxes, scores, classes, max_out, iou, score_thr):
    """Independent tf.image NMS per class, merged by (score desc, index asc), first max_out."""
    picked = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        keep = tf.image.non_max_suppression(boxes[idx], scores[idx], max_out, iou, score_thr)
        picked += [(-scores[idx[j]], idx[j]) for j in keep.numpy()]
    return np.array([i for _, i in sorted(picked)[:max_out]], dtype=int)


@pytest.mark.parametrize("seed,n,kind,num_classes,ties", [
    (30, 300, "large", 3, False), (31, 400, "small", 5, True), (32, 97, "large", 1, True),
    (33, 500, "small", 2, False),
])
def test_class_aware_equals_per_class_tf_image(seed, n, kind, num_classes, ties):
    boxes, scores = _case(seed, n, kind)
    if ties:
        scores = (np.round(scores * 4) / 4).astype("float32")
    classes = np.random.default_rng(seed).integers(0, num_classes, size=n)
    for iou, score_thr, max_out in [(0.5, 0.05, 100), (0.3, -math.inf, n), (0.7, 0.3, 7)]:
        expected = _per_class_reference(boxes, scores, classes, max_out, iou, score_thr)
        indices, selected, count = non_max_suppression(
            boxes, scores, max_out, iou, score_thr, classes=classes
        )
        np.testing.assert_array_equal(indices.numpy(), expected)
        np.testing.assert_array_equal(selected.numpy(), scores[expected])
        assert int(count) == len(expected)


def test_class_aware_never_suppresses_across_classes_and_keeps_iou_at_threshold():
    # Identical boxes of different classes all survive; within a class, IoU exactly 0.5 is kept
    # at threshold 0.5 and suppressed just below it.
    boxes = np.array([[0, 0, 1, 3]] * 3 + [[0, 1, 1, 4], [0, 0, 1, 3]], "float32")
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], "float32")
    classes = np.array([0, 1, 2, 0, 1])
    np.testing.assert_array_equal(
        non_max_suppression(boxes, scores, 10, 0.5, classes=classes)[0], [0, 1, 2, 3]
    )
    below = np.nextafter(np.float32(0.5), 0)
    np.testing.assert_array_equal(
        non_max_suppression(boxes, scores, 10, below, classes=classes)[0], [0, 1, 2]
    )
    np.testing.assert_array_equal(  # class-agnostic: one survivor
        non_max_suppression(boxes, scores, 10, 0.5)[0], [0, 3]
    )


def _random_detections(seed, batch, n, num_classes, ties=False):
    rng = np.random.default_rng(seed)
    boxes = np.stack([_boxes(rng, n, "small") for _ in range(batch)])
    scores = rng.uniform(size=(batch, n, num_classes)).astype("float32") ** 3
    if ties:
        scores = (np.round(scores * 8) / 8).astype("float32")
    return boxes, scores


def _assert_equals_combined_nms(boxes, scores, k, iou, count, selected, selected_boxes,
                                classes):
    """Our class-wise outputs equal tf.image.combined_non_max_suppression's (score > 0.05)."""
    ref = tf.image.combined_non_max_suppression(
        boxes[:, :, None], scores, k, k, iou, 0.05, clip_boxes=False
    )
    np.testing.assert_array_equal(count, ref.valid_detections.numpy())
    np.testing.assert_array_equal(selected, ref.nmsed_scores.numpy())
    np.testing.assert_array_equal(selected_boxes, ref.nmsed_boxes.numpy())
    np.testing.assert_array_equal(classes, ref.nmsed_classes.numpy().astype(int))


@pytest.mark.parametrize("ties", [False, True])
def test_multiclass_equals_combined_non_max_suppression(ties):
    # Without exact score ties: equal to TF's combined kernel, order included. With ties, TF's
    # combined kernel orders equal scores arbitrarily (score-only priority queue and sort), so
    # the reference is per-class tf.image.non_max_suppression (ties: lower index first) merged
    # class-major.
    boxes, scores = _random_detections(40 + ties, 4, 200, 4, ties)
    ours = tf.function(lambda b, s, k, t: multiclass_non_max_suppression(b, s, k, t, 0.05))
    for k, iou in [(100, 0.5), (20, 0.3), (300, 0.7)]:
        box_idx, classes, selected, count, selected_boxes = (
            t.numpy() for t in ours(boxes, scores, k, iou)
        )
        if ties:
            for i in range(len(count)):
                flat = scores[i].T.reshape(-1)
                expected = _per_class_reference(
                    np.tile(boxes[i], (4, 1)), flat, np.repeat(np.arange(4), 200), k, iou, 0.05
                )
                assert count[i] == len(expected)
                np.testing.assert_array_equal(classes[i, : count[i]], expected // 200)
                np.testing.assert_array_equal(box_idx[i, : count[i]], expected % 200)
            continue
        _assert_equals_combined_nms(boxes, scores, k, iou, count, selected, selected_boxes,
                                    classes)


def test_multiclass_under_callers_jit_compile():
    boxes, scores = _random_detections(42, 2, 64, 3)
    ours = tf.function(lambda b, s: multiclass_non_max_suppression(b, s, 30, 0.5, 0.05),
                       jit_compile=True)
    box_idx, classes, selected, count, _ = ours(boxes, scores)
    ref = tf.image.combined_non_max_suppression(
        boxes[:, :, None], scores, 30, 30, 0.5, 0.05, clip_boxes=False
    )
    np.testing.assert_array_equal(count.numpy(), ref.valid_detections.numpy())
    np.testing.assert_array_equal(selected.numpy(), ref.nmsed_scores.numpy())
    np.testing.assert_array_equal(classes.numpy(), ref.nmsed_classes.numpy().astype(int))
    picked = scores[np.arange(2)[:, None], box_idx.numpy(), classes.numpy()]
    valid = np.arange(30)[None] < count.numpy()[:, None]
    np.testing.assert_array_equal(np.where(valid, picked, 0), ref.nmsed_scores.numpy())


def test_class_aware_soft_nms_equals_per_class_soft_nms_merged():
    boxes, scores = _case(43, 150, "large")
    classes = np.random.default_rng(43).integers(0, 3, size=150)
    indices, selected, count = non_max_suppression(
        boxes, scores, 40, 0.5, 0.1, soft_nms_sigma=0.5, classes=classes
    )
    picked = []
    for c in range(3):
        idx = np.flatnonzero(classes == c)
        ref_idx, ref_scores = tf.image.non_max_suppression_with_scores(
            boxes[idx], scores[idx], 40, 0.5, 0.1, 0.5
        )
        picked += [(-s, idx[j]) for j, s in zip(ref_idx.numpy(), ref_scores.numpy())]
    picked = sorted(picked)[:40]
    assert int(count) == len(picked)
    np.testing.assert_array_equal(indices.numpy(), [i for _, i in picked])
    np.testing.assert_allclose(selected.numpy(), [-s for s, _ in picked], atol=1e-6)


def test_class_aware_layer_config_and_inputs():
    boxes, scores = _random_detections(44, 2, 48, 1)
    scores = scores[..., 0]
    classes = np.random.default_rng(44).integers(0, 3, size=(2, 48))
    layer = NonMaxSuppression(10, iou_threshold=0.4, class_aware=True)
    indices, _, counts, _ = (t.numpy() for t in layer([boxes, scores, classes]))
    for k in range(2):
        expected = _per_class_reference(boxes[k], scores[k], classes[k], 10, 0.4, -math.inf)
        np.testing.assert_array_equal(indices[k, : counts[k]], expected)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert clone.class_aware and clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="classes"):
        layer([boxes, scores])
    with pytest.raises(ValueError, match="classes"):
        batched_non_max_suppression(boxes, scores, 5, classes=classes[:, :10])


def _sparse_detections(seed, batch, n, num_classes, live_counts):
    """Detector-like candidates: per image only `live_counts[i]` boxes have some class score
    above 0.05 (clustered, overlapping boxes), the rest far below it."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, size=(batch, 4, 2))
    which = rng.integers(0, 4, size=(batch, n))
    yx = centres[np.arange(batch)[:, None], which] + rng.normal(0, 0.03, size=(batch, n, 2))
    hw = rng.uniform(0.05, 0.25, size=(batch, n, 2))
    boxes = np.concatenate([yx - hw / 2, yx + hw / 2], -1).astype("float32")
    scores = rng.uniform(0.0, 0.04, size=(batch, n, num_classes))
    for i, live in enumerate(live_counts):
        cells = rng.choice(n, size=live, replace=False)
        cls = rng.integers(0, num_classes, size=live)
        scores[i, cells, cls] = rng.uniform(0.05, 1.0, size=live) ** 2 + 0.0501
    return boxes, scores.astype("float32")


@pytest.mark.parametrize("jit_compile", [True, False])
def test_multiclass_compaction_keeps_every_box_tf_image_keeps(jit_compile, monkeypatch):
    # Live counts straddle the compaction widths (16, 32, 64, N = 100): an image with no live
    # box, exactly 16, 17, 32, 33 and all 100; each batch compacts to its own width (16, 64,
    # 100). Without XLA, batches are also split in two parallel halves (as large batches are),
    # each compacted to its own width.
    if not jit_compile:
        monkeypatch.setattr(nms_module, "PARALLEL_MIN_BATCH", 2)
    ours = tf.function(
        lambda b, s, k, t: multiclass_non_max_suppression(b, s, k, t, 0.05, jit_compile=jit_compile)
    )
    for seed, live_counts in enumerate([(0, 16, 3), (17, 32, 33), (100, 2, 40)]):
        boxes, scores = _sparse_detections(50 + seed, len(live_counts), 100, 4, live_counts)
        for k, iou in [(7, 0.3), (400, 0.5), (400, 0.7)][seed % 2:]:
            box_idx, classes, selected, count, selected_boxes = (
                t.numpy() for t in ours(boxes, scores, k, tf.constant(iou))
            )
            _assert_equals_combined_nms(boxes, scores, k, iou, count, selected, selected_boxes,
                                        classes)
            picked = scores[np.arange(len(count))[:, None], box_idx, classes]
            valid = np.arange(box_idx.shape[1])[None] < count[:, None]
            np.testing.assert_array_equal(np.where(valid, picked, 0), selected)


@pytest.mark.parametrize("jit_compile, static_batch", [(True, True), (False, True), (True, False)])
def test_multiclass_stragglers_finish_alone_as_tf_image_selects(jit_compile, static_batch,
                                                                monkeypatch):
    # 12 images from 0 to 100 live boxes finish at very different steps: once at most 12 // 4 =
    # 3 have candidates left, those 3 go on in a loop of their own and their selections are
    # written back to their rows (batches this small do so only with STRAGGLERS_MIN_BATCH
    # lowered). A batch whose size is only known at run time runs one loop.
    monkeypatch.setattr(nms_module, "STRAGGLERS_MIN_BATCH", 4)
    live_counts = (0, 100, 3, 5, 8, 13, 20, 30, 2, 40, 60, 80)
    boxes, scores = _sparse_detections(80, len(live_counts), 100, 4, live_counts)
    batch = len(live_counts) if static_batch else None
    signature = [tf.TensorSpec([batch, 100, 4]), tf.TensorSpec([batch, 100, 4]),
                 tf.TensorSpec([])]
    for k, iou in [(7, 0.3), (400, 0.5), (400, 0.7)]:
        ours = tf.function(lambda b, s, t, k=k: multiclass_non_max_suppression(
            b, s, k, t, 0.05, jit_compile=jit_compile), input_signature=signature)
        box_idx, classes, selected, count, selected_boxes = (
            t.numpy() for t in ours(boxes, scores, iou)
        )
        assert len(set(count)) > 4  # images stop at many different steps
        _assert_equals_combined_nms(boxes, scores, k, iou, count, selected, selected_boxes,
                                    classes)


def test_compaction_width_is_the_smallest_that_holds_every_image():
    from layers.nms import _compaction_widths, _width_index

    widths = _compaction_widths(100)
    assert widths == [16, 32, 64, 100]
    assert _compaction_widths(64) == [16, 32, 64]
    assert _compaction_widths(3) == [3]  # one width, no compaction
    assert int(_width_index(tf.ones([2, 3, 2]), tf.constant(0.05), [3])) == 0
    for live_counts, expected in [((0,), 16), ((0, 16, 3), 16), ((17, 2), 32), ((33,), 64),
                                  ((64, 1), 64), ((65,), 100), ((100, 0), 100)]:
        _, scores = _sparse_detections(70, len(live_counts), 100, 3, live_counts)
        index = int(_width_index(tf.constant(scores), tf.constant(0.05), widths))
        assert widths[index] == expected, live_counts


def test_live_cells_compaction_keeps_live_boxes_in_order():
    from layers.nms import _live_cells

    boxes, scores = _sparse_detections(60, 3, 40, 3, (0, 5, 16))
    src, kept_boxes, kept_scores = (t.numpy() for t in _live_cells(
        tf.constant(boxes), tf.constant(scores), tf.constant(0.05), 16))
    for i in range(3):
        live = np.flatnonzero((scores[i] > 0.05).any(-1))
        np.testing.assert_array_equal(src[i, : len(live)], live)
        np.testing.assert_array_equal(kept_boxes[i, : len(live)], boxes[i, live])
        np.testing.assert_array_equal(kept_scores[i, : len(live)], scores[i, live])
        assert np.all(kept_scores[i, len(live):] == -np.inf)


def test_hoisting_flag_joins_the_users_xla_flags(monkeypatch):
    from layers.nms import LOOP_HOISTING_OPTION, hoist_small_xla_cpu_loops

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert hoist_small_xla_cpu_loops(4096) == (
        f"--xla_backend_extra_options={LOOP_HOISTING_OPTION}=4096")
    # The user's own flags and extra options stay; the option joins their list.
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d --xla_backend_extra_options=a=1")
    assert hoist_small_xla_cpu_loops(8) == (
        f"--xla_dump_to=/tmp/d --xla_backend_extra_options=a=1,{LOOP_HOISTING_OPTION}=8")
    # A limit already set (by the user, or by an earlier call) is kept.
    assert hoist_small_xla_cpu_loops(99).endswith(f"{LOOP_HOISTING_OPTION}=8")
    for bad in (0, -1, 1.5, "1", True):
        with pytest.raises(ValueError, match="positive integer"):
            hoist_small_xla_cpu_loops(bad)


_HOISTED_CHILD = """
import tensorflow as tf
from layers.nms import hoist_small_xla_cpu_loops, multiclass_non_max_suppression
from tests.layers.test_nms import _assert_equals_combined_nms, _sparse_detections

hoist_small_xla_cpu_loops()  # after importing TF, before the first XLA compilation
for batch in (3, 70):  # one loop; two halves of 35 on two threads
    counts = tuple(range(0, 100, 100 // batch))[:batch]
    boxes, scores = _sparse_detections(90 + batch, batch, 100, 4, counts)
    ours = tf.function(lambda b, s: multiclass_non_max_suppression(b, s, 100, 0.5, 0.05))
    _, classes, selected, count, selected_boxes = (t.numpy() for t in ours(boxes, scores))
    _assert_equals_combined_nms(boxes, scores, 100, 0.5, count, selected, selected_boxes,
                                classes)
"""


@pytest.mark.slow
def test_selection_loop_compiles_to_one_kernel_when_hoisted_and_selects_as_tf_image(tmp_path):
    # In a process that hoists small loops (as experiments.nms_detection runs), XLA compiles
    # the selection loop into one kernel ("xla_cpu_small_call" in the optimized HLO: a scatter
    # in the loop's body would keep it out) at a batch of 3 and in each half of 70, and the
    # selections still equal tf.image's bit for bit.
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path} --xla_dump_hlo_as_text",
               TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _HOISTED_CHILD], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # an assertion in the child included
    optimized = [p for p in tmp_path.iterdir()
                 if "multiclass_select" in p.name and p.name.endswith("after_optimizations.txt")]
    assert len(optimized) == 2  # batch 3 and the halves of 70 (35 images each)
    for path in optimized:
        hlo = path.read_text()
        # One loop per compaction width, each hoisted into a kernel of its own.
        assert hlo.count("xla_cpu_small_call") == hlo.count(" while(") > 0, path.name
