"""Bounding-box operations: area, pairwise IoU and format conversion.

Boxes are `[y1, x1, y2, x2]` by default, the `tf.image` convention. Like `tf.image`, a box may
have its corners in either order: the extent along each axis is taken between the min and the
max of its two coordinates. For boxes A and B with those extents,

    area(A)   = (max(y1, y2) - min(y1, y2)) * (max(x1, x2) - min(x1, x2))
    inter     = max(0, min(ymax_A, ymax_B) - max(ymin_A, ymin_B))
              * max(0, min(xmax_A, xmax_B) - max(xmin_A, xmin_B))
    IoU(A, B) = inter / ((area(A) + area(B)) - inter),   and 0 if area(A) <= 0 or area(B) <= 0

which is the float32 expression, operation for operation, of TensorFlow's C++ NMS kernel
(`tensorflow/core/kernels/image/non_max_suppression_op.cc`, `IOU`), so thresholding these IoUs
makes the same decisions as `tf.image.non_max_suppression`. A zero-area box has IoU 0 with
every box (itself included), never NaN.

Formats understood by `box_convert`:
    "yxyx":        [y1, x1, y2, x2]  (tf.image)
    "xyxy":        [x1, y1, x2, y2]  (torchvision, COCO results after conversion)
    "xywh":        [x_min, y_min, width, height]  (COCO annotations)
    "center_xywh": [x_center, y_center, width, height]  (YOLO)
"""

from keras import ops

FORMATS = ("yxyx", "xyxy", "xywh", "center_xywh")


def _extents(boxes):
    """Returns (ymin, xmin, ymax, xmax), each of shape boxes.shape[:-1], from yxyx boxes."""
    y1, x1, y2, x2 = ops.unstack(boxes, num=4, axis=-1)
    return ops.minimum(y1, y2), ops.minimum(x1, x2), ops.maximum(y1, y2), ops.maximum(x1, x2)


def box_area(boxes):
    """Area of `[y1, x1, y2, x2]` boxes, whatever the order of each box's corners.

    Args:
        boxes: A float tensor of shape `(..., 4)`.

    Returns:
        A tensor of shape `boxes.shape[:-1]`, non-negative.
    """
    boxes = ops.convert_to_tensor(boxes)
    ymin, xmin, ymax, xmax = _extents(boxes)
    return (ymax - ymin) * (xmax - xmin)


def pairwise_iou(boxes_a, boxes_b):
    """Intersection over union of every box in `boxes_a` with every box in `boxes_b`.

    Computed exactly as TensorFlow's NMS kernel does (see the module docstring), so it is
    symmetric bit for bit and zero (not NaN) whenever either box has zero area.

    Args:
        boxes_a: A float tensor of shape `(..., N, 4)`, `[y1, x1, y2, x2]` boxes.
        boxes_b: A float tensor of shape `(..., M, 4)` with the same leading dimensions.

    Returns:
        A tensor of shape `(..., N, M)`.
    """
    boxes_a = ops.convert_to_tensor(boxes_a)
    boxes_b = ops.convert_to_tensor(boxes_b, dtype=boxes_a.dtype)
    ymin_a, xmin_a, ymax_a, xmax_a = (ops.expand_dims(t, -1) for t in _extents(boxes_a))
    ymin_b, xmin_b, ymax_b, xmax_b = (ops.expand_dims(t, -2) for t in _extents(boxes_b))
    area_a = (ymax_a - ymin_a) * (xmax_a - xmin_a)
    area_b = (ymax_b - ymin_b) * (xmax_b - xmin_b)
    inter_h = ops.maximum(ops.minimum(ymax_a, ymax_b) - ops.maximum(ymin_a, ymin_b), 0.0)
    inter_w = ops.maximum(ops.minimum(xmax_a, xmax_b) - ops.maximum(xmin_a, xmin_b), 0.0)
    inter = inter_h * inter_w
    # Same association as the C++ kernel: (area_a + area_b) - inter.
    union = (area_a + area_b) - inter
    valid = ops.logical_and(area_a > 0.0, area_b > 0.0)
    # The inner where keeps 0/0 out of the graph, so no NaN appears even in gradients.
    return ops.where(valid, inter / ops.where(valid, union, 1.0), 0.0)


def _to_yxyx(boxes, fmt):
    a, b, c, d = ops.unstack(boxes, num=4, axis=-1)
    if fmt == "yxyx":
        return a, b, c, d
    if fmt == "xyxy":
        return b, a, d, c
    if fmt == "xywh":
        return b, a, b + d, a + c
    # center_xywh
    return b - d / 2.0, a - c / 2.0, b + d / 2.0, a + c / 2.0


def _from_yxyx(y1, x1, y2, x2, fmt):
    if fmt == "yxyx":
        parts = (y1, x1, y2, x2)
    elif fmt == "xyxy":
        parts = (x1, y1, x2, y2)
    elif fmt == "xywh":
        parts = (x1, y1, x2 - x1, y2 - y1)
    else:  # center_xywh
        parts = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1)
    return ops.stack(parts, axis=-1)


def box_convert(boxes, source, target):
    """Converts boxes between the formats listed in the module docstring.

    The conversion keeps each box's corner order: a flipped `yxyx` box becomes an `xywh` box
    with negative width/height and converts back to the same flipped box.

    Args:
        boxes: A float tensor of shape `(..., 4)`.
        source: The format of `boxes`, one of `FORMATS`.
        target: The format wanted, one of `FORMATS`.

    Returns:
        A tensor of the same shape as `boxes` in the `target` format.

    Raises:
        ValueError: If `source` or `target` is not a known format.
    """
    for name, fmt in (("source", source), ("target", target)):
        if fmt not in FORMATS:
            raise ValueError(f"Unknown box format {name}={fmt!r}; expected one of {FORMATS}.")
    boxes = ops.convert_to_tensor(boxes)
    if source == target:
        return boxes
    return _from_yxyx(*_to_yxyx(boxes, source), target)
