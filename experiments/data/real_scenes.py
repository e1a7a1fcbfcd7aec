"""Real captioning and detection data behind `--dataset`, in the shape-scenes element structure.

For users with a network (or a prepared TFDS `data_dir`), the captioning and detection
experiments can swap the generated `shape_scenes` for:

- "coco_captions": TFDS `coco_captions` (COCO 2014 images, Karpathy splits, >= 5 captions),
- "voc": TFDS `voc/2007` (20 classes, boxes, no captions),
- "coco": TFDS `coco/2017` (80 classes, boxes, no captions; its test split has no boxes).

`load_real(name, split)` returns a tf.data.Dataset of the same dicts as
`experiments.data.shape_scenes.load`, less what real data does not have:

    id           int64, the COCO image id, or 1..n in split order for VOC
    image        uint8 (H, W, 3), the original size (resize in the input pipeline)
    objects      bbox float32 (n, 4) normalised [ymin, xmin, ymax, xmax]
                 label int64 (n,) index into `class_names(name)`
                 area float32 (n,) pixels (COCO's segment area; box area for VOC)
    captions     string (5,): the first five references; "" where there are fewer or none
    has_overlap  bool, two objects of one class with box IoU >= OVERLAP_IOU_MIN

Split names are the shape-scenes ones: "train", "validation", "test" ("validation" is
`coco_captions`'s "val"); other TFDS split strings pass through unchanged.

With `data_dir` set nothing is downloaded (a prepared copy must be there); without it TFDS
downloads into its default directory. Failures raise a one-line ConfigError.
"""

import tensorflow as tf

from experiments.data.shape_scenes import NUM_CAPTIONS, OVERLAP_IOU_MIN
from experiments.runtime.errors import ConfigError

# name -> (TFDS name, split renames, kind)
REAL_DATASETS = {
    "coco_captions": ("coco_captions", {"validation": "val"}, "captioning"),
    "voc": ("voc/2007", {}, "detection"),
    "coco": ("coco/2017", {}, "detection"),
}


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    return tfds.builder(REAL_DATASETS[name][0], data_dir=data_dir)


def _check(name):
    if name not in REAL_DATASETS:
        raise ConfigError(f"unknown real scenes dataset {name!r}; choose one of "
                          f"{', '.join(REAL_DATASETS)}")


def class_names(name, *, data_dir=None):
    """The label names of dataset `name` (index = `objects/label`)."""
    _check(name)
    feature = _tfds_builder(name, data_dir).info.features["objects"]["label"]
    return list(feature.names)


def pairwise_iou(boxes):
    """IoU matrix (n, n) of [ymin, xmin, ymax, xmax] boxes, float32."""
    boxes = tf.cast(boxes, tf.float32)
    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    area = tf.maximum(y1 - y0, 0.0) * tf.maximum(x1 - x0, 0.0)
    ih = tf.maximum(tf.minimum(y1[:, None], y1[None]) - tf.maximum(y0[:, None], y0[None]), 0.0)
    iw = tf.maximum(tf.minimum(x1[:, None], x1[None]) - tf.maximum(x0[:, None], x0[None]), 0.0)
    inter = ih * iw
    union = area[:, None] + area[None] - inter
    return tf.math.divide_no_nan(inter, union)


def has_same_class_overlap(boxes, labels, threshold=OVERLAP_IOU_MIN):
    """Whether two different objects of one class have box IoU >= threshold."""
    n = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None])
    different = tf.logical_not(tf.eye(n, dtype=tf.bool))
    hits = tf.logical_and(tf.logical_and(same, different), pairwise_iou(boxes) >= threshold)
    return tf.reduce_any(hits)


def _captions(texts):
    texts = texts[:NUM_CAPTIONS]
    padding = tf.fill([NUM_CAPTIONS - tf.shape(texts)[0]], "")
    return tf.ensure_shape(tf.concat([texts, padding], axis=0), [NUM_CAPTIONS])


def _to_scene(example, index, name):
    objects = example["objects"]
    # Real examples have one length per object field; tfds.testing.mock_data draws each
    # field's length separately, so keep the common prefix.
    fields = [objects[k] for k in ("bbox", "label", "area") if k in objects]
    n = tf.reduce_min([tf.shape(f)[0] for f in fields])
    boxes = tf.cast(objects["bbox"][:n], tf.float32)
    labels = tf.cast(objects["label"][:n], tf.int64)
    image = example["image"]
    if "area" in objects:
        area = tf.cast(objects["area"][:n], tf.float32)
    else:
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * size[0] * size[1]
    if "captions" in example:
        captions = _captions(example["captions"]["text"])
    else:
        captions = tf.fill([NUM_CAPTIONS], "")
    image_id = (tf.cast(example["image/id"], tf.int64) if "image/id" in example
                else tf.cast(index, tf.int64) + 1)
    return {
        "id": image_id,
        "image": image,
        "objects": {"bbox": boxes, "label": labels, "area": area},
        "captions": captions,
        "has_overlap": has_same_class_overlap(boxes, labels),
    }


def load_real(name, split, *, data_dir=None, shuffle_files=False):
    """Loads `split` of real dataset `name` in the shape-scenes element structure.

    Args:
        name: One of REAL_DATASETS ("coco_captions", "voc", "coco").
        split: "train", "validation", "test" or any TFDS split string.
        data_dir: A TFDS data directory with a prepared copy (then nothing is downloaded);
            None downloads into the TFDS default directory.
        shuffle_files: Passed to TFDS.

    Raises:
        ConfigError: On an unknown name, or any failure to load (no network, no copy, ...).
    """
    _check(name)
    tfds_name, renames, _ = REAL_DATASETS[name]
    where = (f"from --data_dir={data_dir} (a prepared TFDS copy; nothing is downloaded when "
             f"--data_dir is set)" if data_dir is not None
             else "through TFDS (no network? pass --data_dir with a prepared copy)")
    try:
        import tensorflow_datasets as tfds

        dataset = tfds.load(tfds_name, split=renames.get(split, split), data_dir=data_dir,
                            download=data_dir is None, shuffle_files=shuffle_files)
    except Exception as e:  # TFDS, tf.data and network errors have no common base class.
        lines = str(e).strip().splitlines()
        raise ConfigError(f"could not load --dataset={name} {where}: {type(e).__name__}: "
                          f"{(lines[0] if lines else '')[:200]}") from None
    return dataset.enumerate().map(lambda i, ex: _to_scene(ex, i, name),
                                   num_parallel_calls=tf.data.AUTOTUNE)
