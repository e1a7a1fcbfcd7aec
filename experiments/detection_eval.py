"""COCO-style detection scoring with pycocotools' COCOeval, wired the way the field does it.

Ground truth: one COCO image per example (ids as given, >= 1), one annotation per object with
`iscrowd=0`, `area` (the dataset's pixel area: shape coverage for shape scenes, box area for
VOC), `bbox` [x, y, w, h] in pixels, annotation ids from 1 and category ids `label + 1`.
Detections: [x, y, w, h] pixels, `score`, `category_id`; COCOeval's standard parameters
(IoU 0.50:0.05:0.95, maxDets 1/10/100, areas small < 32^2 <= medium < 96^2 <= large).

`coco_evaluate` returns the 12 standard stats by name plus `recall50` (recall at IoU 0.5,
maxDets 100, all areas, averaged over the categories that have ground truth) and
`precision50_at_r50` (interpolated precision at IoU 0.5, recall 0.5), used by the NMS claims.
A stat COCO reports as -1 (no ground truth in that area range) comes back as NaN.
"""

import contextlib
import io

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl")


def coco_ground_truth(ids, boxes, labels, areas, num_classes, image_size):
    """A pycocotools `COCO` object from per-image ground truth.

    Args:
        ids: Image ids (ints >= 1), one per image.
        boxes: Per image, (n, 4) normalised [ymin, xmin, ymax, xmax].
        labels: Per image, (n,) class indices in [0, num_classes).
        areas: Per image, (n,) areas in pixels.
        num_classes: Number of categories (ids 1..num_classes).
        image_size: Side of the (square) image the pixel coordinates refer to.
    """
    from pycocotools.coco import COCO

    images, annotations = [], []
    for image_id, b, l, a in zip(ids, boxes, labels, areas):
        images.append({"id": int(image_id), "width": image_size, "height": image_size})
        for box, label, area in zip(np.asarray(b, np.float64).reshape(-1, 4), l, a):
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image_id),
                "category_id": int(label) + 1, "bbox": _xywh(box, image_size),
                "area": float(area), "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _xywh(box, image_size):
    y0, x0, y1, x1 = (float(v) * image_size for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_detections(ids, boxes, scores, classes, counts, image_size):
    """COCO result dicts from padded post-processed outputs (the first `counts[i]` are valid)."""
    results = []
    for image_id, b, s, c, n in zip(ids, boxes, scores, classes, counts):
        for k in range(int(n)):
            results.append({"image_id": int(image_id), "category_id": int(c[k]) + 1,
                            "bbox": _xywh(b[k], image_size), "score": float(s[k])})
    return results


def coco_evaluate(ground_truth, detections, image_ids=None):
    """COCOeval bbox stats of `detections` (COCO result dicts) against `ground_truth`.

    Args:
        ground_truth: A `COCO` object (`coco_ground_truth`).
        detections: A list of COCO result dicts.
        image_ids: Optional subset of image ids to score (e.g. the overlapping scenes).

    Returns:
        Dict of the STAT_NAMES (NaN where COCO gives -1), "recall50", "precision50_at_r50"
        and "detections" (how many were scored).
    """
    return coco_evaluate_subsets(ground_truth, detections, {"": image_ids})[""]


def coco_evaluate_subsets(ground_truth, detections, subsets):
    """`coco_evaluate` of several image subsets, with COCOeval's per-image matching run once.

    COCOeval matches each (image, category) on its own, so a subset's stats come from the
    full run's per-image results restricted to its images (accumulated in the subset's image
    order): the same numbers as `coco_evaluate(..., image_ids=subset)`, one `evaluate()`.

    Args:
        ground_truth: A `COCO` object.
        detections: A list of COCO result dicts.
        subsets: Dict name -> image ids (None: every image of `ground_truth`).

    Returns:
        Dict name -> the stats dict of `coco_evaluate`.
    """
    import copy

    from pycocotools.cocoeval import COCOeval

    every = sorted(ground_truth.getImgIds())
    wanted = {name: (every if ids is None else sorted(int(i) for i in ids))
              for name, ids in subsets.items()}
    union = sorted(set().union(*wanted.values())) if wanted else []
    keep = set(union)
    detections = [d for d in detections if d["image_id"] in keep]
    if not detections:
        return {name: _empty_stats() for name in subsets}
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, results, "bbox")
        evaluator.params.imgIds = union
        evaluator.evaluate()
    # evalImgs is laid out [category][area range][image] over params.imgIds.
    n_images, n_areas = len(union), len(evaluator.params.areaRng)
    position = {image_id: i for i, image_id in enumerate(union)}
    out = {}
    for name, ids in wanted.items():
        members = set(ids)
        subset_dets = sum(d["image_id"] in members for d in detections)
        if not subset_dets:
            out[name] = _empty_stats()
            continue
        part = copy.copy(evaluator)
        part.params = copy.deepcopy(evaluator.params)
        part.params.imgIds = ids
        part._paramsEval = copy.deepcopy(part.params)
        part.evalImgs = [evaluator.evalImgs[(k * n_areas + a) * n_images + position[i]]
                         for k in range(len(evaluator.params.catIds))
                         for a in range(n_areas) for i in ids]
        with contextlib.redirect_stdout(io.StringIO()):
            part.accumulate()
            part.summarize()
        out[name] = _stats(part, subset_dets)
    return out


def _empty_stats():
    stats = {name: 0.0 for name in STAT_NAMES}
    stats.update(recall50=0.0, precision50_at_r50=0.0, detections=0)
    return stats


def _stats(evaluator, num_detections):
    stats = {name: (float("nan") if v < 0 else float(v))
             for name, v in zip(STAT_NAMES, evaluator.stats)}
    # recall: (T, K, A, M); precision: (T, R, K, A, M); T=0 is IoU .5, A=0 all, M=2 maxDets 100.
    recall = evaluator.eval["recall"][0, :, 0, 2]
    stats["recall50"] = float(np.mean(recall[recall > -1])) if np.any(recall > -1) else 0.0
    r_index = int(np.argmin(np.abs(evaluator.params.recThrs - 0.5)))
    precision = evaluator.eval["precision"][0, r_index, :, 0, 2]
    stats["precision50_at_r50"] = (float(np.mean(precision[precision > -1]))
                                   if np.any(precision > -1) else 0.0)
    stats["detections"] = num_detections
    return stats
