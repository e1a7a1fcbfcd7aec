"""Tests for layers.boxes against a NumPy transcription of TensorFlow's C++ IOU and tf.image."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from layers.boxes import FORMATS, box_area, box_convert, pairwise_iou


def _random_boxes(rng, n, flip=True):
    boxes = rng.uniform(0.0, 1.0, size=(n, 4)).astype("float32")
    if not flip:
        boxes = np.concatenate(
            [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1
        )
    return boxes


def _numpy_iou(a, b):
    """The C++ kernel's IOU (non_max_suppression_op.cc), box by box, in float32."""
    out = np.zeros((len(a), len(b)), np.float32)
    f = np.float32
    for i, j in itertools.product(range(len(a)), range(len(b))):
        ymin_i, xmin_i = min(a[i, 0], a[i, 2]), min(a[i, 1], a[i, 3])
        ymax_i, xmax_i = max(a[i, 0], a[i, 2]), max(a[i, 1], a[i, 3])
        ymin_j, xmin_j = min(b[j, 0], b[j, 2]), min(b[j, 1], b[j, 3])
        ymax_j, xmax_j = max(b[j, 0], b[j, 2]), max(b[j, 1], b[j, 3])
        area_i = f(f(ymax_i - ymin_i) * f(xmax_i - xmin_i))
        area_j = f(f(ymax_j - ymin_j) * f(xmax_j - xmin_j))
        if area_i <= 0 or area_j <= 0:
            continue
        inter = f(
            max(f(min(ymax_i, ymax_j) - max(ymin_i, ymin_j)), f(0))
            * max(f(min(xmax_i, xmax_j) - max(xmin_i, xmin_j)), f(0))
        )
        out[i, j] = f(inter / f(f(area_i + area_j) - inter))
    return out


def test_box_area_takes_min_max_of_corners():
    boxes = np.array([[0.0, 0.0, 2.0, 3.0], [2.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0]], "float32")
    np.testing.assert_array_equal(box_area(boxes).numpy(), [6.0, 6.0, 0.0])


def test_pairwise_iou_matches_cpp_formula_bitwise():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 40), _random_boxes(rng, 30)
    np.testing.assert_array_equal(pairwise_iou(a, b).numpy(), _numpy_iou(a, b))


def test_pairwise_iou_is_symmetric_and_corner_order_free():
    rng = np.random.default_rng(1)
    a = _random_boxes(rng, 50)
    iou = pairwise_iou(a, a).numpy()
    np.testing.assert_array_equal(iou, iou.T)
    flipped = a[:, [2, 3, 0, 1]]
    np.testing.assert_array_equal(pairwise_iou(flipped, a).numpy(), iou)
    np.testing.assert_allclose(np.diag(iou), 1.0, rtol=1e-6)


def test_pairwise_iou_exact_values_and_zero_area():
    boxes = np.array(
        [
            [0.0, 0.0, 1.0, 3.0],
            [0.0, 1.0, 1.0, 4.0],  # IoU with box 0: 2 / (3 + 3 - 2) = 0.5 exactly
            [5.0, 5.0, 6.0, 6.0],  # disjoint
            [0.5, 0.5, 0.5, 2.0],  # zero height, inside box 0
            [0.5, 0.5, 0.5, 2.0],  # the same zero-area box
        ],
        "float32",
    )
    iou = pairwise_iou(boxes, boxes).numpy()
    assert not np.isnan(iou).any()
    assert iou[0, 1] == 0.5 and iou[1, 0] == 0.5
    assert iou[0, 2] == 0.0
    np.testing.assert_array_equal(iou[3:, :], 0.0)
    np.testing.assert_array_equal(iou[:, 3:], 0.0)


def test_pairwise_iou_zero_area_gradient_is_finite():
    boxes = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        iou = pairwise_iou(boxes, boxes)
    grad = tape.gradient(iou, boxes).numpy()
    assert np.isfinite(grad).all()


def test_pairwise_iou_batched_leading_dims():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(3, 7, 4)).astype("float32")
    b = rng.uniform(size=(3, 5, 4)).astype("float32")
    out = pairwise_iou(a, b).numpy()
    assert out.shape == (3, 7, 5)
    for k in range(3):
        np.testing.assert_array_equal(out[k], _numpy_iou(a[k], b[k]))


def test_box_convert_known_values():
    yxyx = np.array([[1.0, 2.0, 5.0, 10.0]], "float32")
    np.testing.assert_array_equal(box_convert(yxyx, "yxyx", "xyxy").numpy(), [[2, 1, 10, 5]])
    np.testing.assert_array_equal(box_convert(yxyx, "yxyx", "xywh").numpy(), [[2, 1, 8, 4]])
    np.testing.assert_array_equal(box_convert(yxyx, "yxyx", "center_xywh").numpy(), [[6, 3, 8, 4]])


@pytest.mark.parametrize("source,target", list(itertools.product(FORMATS, FORMATS)))
def test_box_convert_round_trips(source, target):
    rng = np.random.default_rng(3)
    boxes = box_convert(_random_boxes(rng, 20, flip=False), "yxyx", source).numpy()
    back = box_convert(box_convert(boxes, source, target), target, source).numpy()
    np.testing.assert_allclose(back, boxes, atol=1e-6)


def test_box_convert_rejects_unknown_format():
    with pytest.raises(ValueError, match="Unknown box format"):
        box_convert(np.zeros((1, 4), "float32"), "yxyx", "cxcywh")
