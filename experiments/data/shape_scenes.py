"""Shape scenes: a generated TFDS dataset of coloured shapes with boxes, labels and captions.

No caption or detection dataset ships offline, so the captioning and detection experiments share
this one. It behaves like any TFDS dataset (versioned, split, cached under `data_dir`):

    import experiments.data.shape_scenes as shape_scenes     # registers "shape_scenes"
    ds = shape_scenes.load("train", config="quick")          # builds once, then reads the cache
    ds = tfds.load("shape_scenes/quick", split="train", data_dir=...,
                   download_and_prepare_kwargs=shape_scenes.OFFLINE_PREPARE_KWARGS)

Each example (`load` and `tfds.load` give the same dict):

    id           int64, 1..n within a split (COCO image ids for pycocotools ground truth)
    image        uint8 (H, W, 3), H = W = image_size, a dark plain or lightly textured background
    objects      bbox   float32 (n, 4) normalised [ymin, xmin, ymax, xmax], the shape's full extent
                 label  int64 (n,) index into SHAPES       colour int64 (n,) index into COLOURS
                 size   int64 (n,) index into SIZES        area   float32 (n,) pixels (coverage)
    captions     string (5,) reference captions from a small grammar that reads the scene
    has_overlap  bool, the image holds two objects of the same shape whose boxes have IoU in
                 [OVERLAP_IOU_MIN, OVERLAP_IOU_MAX]; in every other pair IoU <= LOW_IOU_MAX

Scenes hold 1-4 objects, each a (shape, colour, size) from SHAPES x COLOURS x SIZES, drawn with
Pillow at 4x resolution and box-filtered (anti-aliased). A share `overlap_fraction` of each split
(exactly floor(n * fraction) images, spread evenly) holds an overlapping same-shape pair, which
is what makes the NMS threshold matter. The `compositional_test` split uses only the
(colour, shape) pairs in HELD_OUT_PAIRS, which never occur in train / validation / test: a
captioner must compose colour and shape words it has seen apart. Validation is for tuning and
early stopping; test is only reported.

Determinism: example `index` of split `split` is drawn from
`numpy.random.default_rng([seed, major, minor, patch, SPLIT_IDS[split], index])`, its pixels are
composited in integer arithmetic, so the same version and seed give the same bytes anywhere (for
a given Pillow rasteriser); examples are independent, so generation can be spread over processes.
Bump VERSION whenever the generator's output changes.

Configs (`CONFIGS`): "default" 64 px, 8000 / 1000 / 1000 / 1000 (train / validation / test /
compositional_test); "image96" the same at 96 px; "quick" 64 px, 1500 / 300 / 300 / 300 for
`--quick` runs; "tiny" 64 px, 40 / 10 / 10 / 10 for smoke tests. Any other size: pass a
`ShapeScenesConfig` to `builder()` / `load()`.

No network: generation downloads nothing (no `dl_manager` use), and TFDS 4.9 reaches its GCS
metadata bucket only when asked to (`try_gcs=True`, `DownloadConfig(try_download_gcs=True)` with
GCS enabled); `builder()` / `load()` pass `try_gcs=False` and `OFFLINE_PREPARE_KWARGS`
(`try_download_gcs=False`), so building and reading never open a socket.

Default data_dir: $KF_DATA_DIR if set, else `runs/tfds` under the current directory (next to
the runs it feeds); `tfds.load` callers pass their own (the TFDS default is
~/tensorflow_datasets).

`python -m experiments.data.shape_scenes --show=16 --out=shape_scenes.png` writes a PNG grid of
examples with their boxes and one caption each.
"""

import argparse
import dataclasses
import io
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

import tensorflow_datasets as tfds

from experiments.runtime.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
CLASS_NAMES = SHAPES  # detection classes: objects/label indexes this
PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 50),
    "green": (40, 180, 70),
    "blue": (50, 100, 235),
    "purple": (160, 70, 200),
}
# (colour, shape) pairs seen only in the compositional_test split: every colour and every shape
# still occurs in train, only these combinations do not.
HELD_OUT_PAIRS = (
    ("red", "triangle"),
    ("orange", "star"),
    ("yellow", "square"),
    ("green", "diamond"),
    ("blue", "circle"),
    ("purple", "triangle"),
)
SEEN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)

SPLITS = ("train", "validation", "test", "compositional_test")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
NUM_CAPTIONS = 5
MAX_OBJECTS = 4

# Object side as a fraction of the image side, per size class.
SIZE_RANGES = {"small": (0.15, 0.20), "large": (0.28, 0.34)}
OVERLAP_IOU_MIN, OVERLAP_IOU_MAX = 0.3, 0.6
LOW_IOU_MAX = 0.1
# Every object keeps at least this share of its coverage visible (not under a later object).
MIN_VISIBLE = 0.5
# Spatial relations from box centres (normalised): the main axis offset must be at least
# RELATION_MIN_OFFSET and RELATION_DOMINANCE times the other axis offset.
RELATION_MIN_OFFSET = 0.15
RELATION_DOMINANCE = 1.5
# Regions are the image thirds; an object is only placed in a region in a caption when its
# centre is at least REGION_MARGIN from a third's boundary.
REGION_MARGIN = 0.03

_SUPERSAMPLE = 4

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
REGION_PHRASES = {
    ("top", "left"): ("in the top left",), ("top", "right"): ("in the top right",),
    ("bottom", "left"): ("in the bottom left",), ("bottom", "right"): ("in the bottom right",),
    ("top", "centre"): ("at the top",), ("bottom", "centre"): ("at the bottom",),
    ("middle", "left"): ("on the left",), ("middle", "right"): ("on the right",),
    ("middle", "centre"): ("in the centre", "in the middle"),
}
_PREFIXES_ONE = ("", "there is ", "a picture of ", "an image with ")
_PREFIXES_MANY = ("", "there are ", "a picture of ", "an image with ")


def _vocabulary():
    words = set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(NUMBER_WORDS.values())
    for group in (SIZE_WORDS.values(), RELATION_WORDS.values(), REGION_PHRASES.values(),
                  [_PREFIXES_ONE, _PREFIXES_MANY]):
        for phrases in group:
            for phrase in phrases:
                words.update(phrase.split())
    words.update({"a", "an", "and", "is", "shapes", "single", ",", ":"})
    return tuple(sorted(words))


VOCABULARY = _vocabulary()  # every token a caption can hold ("," and ":" are tokens)


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(eq=False)
class ShapeScenesConfig(tfds.core.BuilderConfig):
    """A shape-scenes variant: image size, split sizes, overlap share and seed."""

    image_size: int = 64
    train: int = 8000
    validation: int = 1000
    test: int = 1000
    compositional_test: int = 1000
    overlap_fraction: float = 0.2
    seed: int = 0

    def split_size(self, split):
        return getattr(self, split)


CONFIGS = {
    "default": ShapeScenesConfig(
        name="default", description="64x64, 8000/1000/1000/1000 (the full experiments)"),
    "image96": ShapeScenesConfig(
        name="image96", image_size=96, description="96x96, 8000/1000/1000/1000"),
    "quick": ShapeScenesConfig(
        name="quick", train=1500, validation=300, test=300, compositional_test=300,
        description="64x64, 1500/300/300/300 (--quick runs)"),
    "tiny": ShapeScenesConfig(
        name="tiny", train=40, validation=10, test=10, compositional_test=10,
        description="64x64, 40/10/10/10 (smoke tests)"),
}


def _check_config(config):
    if not isinstance(config.image_size, int) or config.image_size < 32:
        raise ConfigError(f"shape_scenes image_size must be an integer >= 32, "
                          f"got {config.image_size!r}")
    for split in SPLITS:
        n = config.split_size(split)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"shape_scenes {split} size must be a positive integer, got {n!r}")
    if not 0.0 <= config.overlap_fraction <= 1.0:
        raise ConfigError(f"shape_scenes overlap_fraction must be in [0, 1], "
                          f"got {config.overlap_fraction!r}")


# ----------------------------------------------------------------------------- geometry


def _unit_polygon(shape):
    """Vertices of `shape` scaled to fill the unit box [0, 1]^2 exactly, as (x, y), y down."""
    if shape == "square":
        return np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    if shape == "triangle":
        return np.array([[0.5, 0], [1, 1], [0, 1]], float)
    if shape == "diamond":
        return np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]], float)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        points = (points - points.min(0)) / (points.max(0) - points.min(0))
        return np.round(points, 6)  # absorbs last-ulp differences between libms
    raise ValueError(shape)


_UNIT_POLYGONS = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}


def _render_crop(shape, box, image_size):
    """Coverage of one shape in the smallest pixel window around its box.

    Returns (alpha uint8 (h, w), (row0, col0)) with the window's top-left pixel.
    """
    f = _SUPERSAMPLE
    col0 = max(0, int(np.floor(box[0])) - 1)
    row0 = max(0, int(np.floor(box[1])) - 1)
    col1 = min(image_size, int(np.ceil(box[2])) + 1)
    row1 = min(image_size, int(np.ceil(box[3])) + 1)
    canvas = Image.new("L", ((col1 - col0) * f, (row1 - row0) * f), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = (round(float(v) * f, 3) for v in
                      (box[0] - col0, box[1] - row0, box[2] - col0, box[3] - row0))
    # Pillow fills the supersampled pixels floor(lo)..floor(hi) of a shape spanning [lo, hi]
    # (both ends inclusive), so a shape spanning [x0, x1) is drawn over [x0, x1 - 1].
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        unit = _UNIT_POLYGONS[shape]
        xs = np.round(x0 + unit[:, 0] * (x1 - x0 - 1), 3)
        ys = np.round(y0 + unit[:, 1] * (y1 - y0 - 1), 3)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    # Box filter: each output pixel is the rounded mean of its f x f supersamples.
    return np.asarray(canvas.reduce(f)), (row0, col0)


def render_mask(shape, box, image_size):
    """Anti-aliased coverage (uint8, 0..255, shape (S, S)) of one shape filling `box`.

    Args:
        shape: One of SHAPES.
        box: (x0, y0, x1, y1) in pixels, continuous coordinates (pixel i spans [i, i + 1)).
        image_size: S.
    """
    alpha, (row0, col0) = _render_crop(shape, box, image_size)
    mask = np.zeros((image_size, image_size), np.uint8)
    mask[row0:row0 + alpha.shape[0], col0:col0 + alpha.shape[1]] = alpha
    return mask


def box_iou(a, b):
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def relation(a, b):
    """The clear spatial relation of box a to box b ("left", "right", "above", "below") or None.

    Boxes are [ymin, xmin, ymax, xmax] (any consistent unit); decided from the box centres.
    """
    ay, ax = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    by, bx = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    dx, dy = bx - ax, by - ay
    if abs(dx) >= RELATION_MIN_OFFSET and abs(dx) >= RELATION_DOMINANCE * abs(dy):
        return "left" if dx > 0 else "right"
    if abs(dy) >= RELATION_MIN_OFFSET and abs(dy) >= RELATION_DOMINANCE * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def region(box):
    """(row, column) third of a normalised [ymin, xmin, ymax, xmax] box's centre, or None if
    the centre lies within REGION_MARGIN of a boundary between thirds."""
    names = (("top", "middle", "bottom"), ("left", "centre", "right"))
    out = []
    for centre, labels in zip(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), names):
        if min(abs(centre - 1 / 3), abs(centre - 2 / 3)) < REGION_MARGIN:
            return None
        out.append(labels[0] if centre < 1 / 3 else labels[1] if centre < 2 / 3 else labels[2])
    return tuple(out)


# ----------------------------------------------------------------------------- scenes


def _example_rng(config, version, split, index):
    v = tfds.core.Version(str(version))
    return np.random.default_rng(
        [int(config.seed), v.major, v.minor, v.patch, SPLIT_IDS[split], int(index)])


def is_overlap_index(index, n, fraction):
    """Whether example `index` of a split of `n` gets an overlapping same-shape pair: exactly
    floor(n * fraction) indices, spread evenly."""
    del n
    return int((index + 1) * fraction) > int(index * fraction)


def _sample_box(rng, side_range, size_px):
    side = rng.uniform(*side_range) * size_px
    x0 = rng.uniform(1.0, size_px - 1.0 - side)
    y0 = rng.uniform(1.0, size_px - 1.0 - side)
    return np.array([x0, y0, x0 + side, y0 + side])


def _place(rng, objects, size_px, overlap):
    """Boxes (x0, y0, x1, y1) in pixels for `objects`; if `overlap`, objects 0 and 1 (same
    shape and size class) get IoU in [OVERLAP_IOU_MIN, OVERLAP_IOU_MAX]. Every other pair keeps
    IoU <= LOW_IOU_MAX. Returns None when a placement fails (the caller redraws)."""
    boxes = []
    start = 0
    if overlap:
        side_range = SIZE_RANGES[objects[0]["size"]]
        for _ in range(200):
            a = _sample_box(rng, side_range, size_px)
            side = rng.uniform(*side_range) * size_px
            dx, dy = rng.uniform(-0.7, 0.7, 2) * side
            x0, y0 = a[0] + dx, a[1] + dy
            b = np.array([x0, y0, x0 + side, y0 + side])
            inside = b[0] >= 1.0 and b[1] >= 1.0 and b[2] <= size_px - 1 and b[3] <= size_px - 1
            # A little inside the nominal range, so float noise never crosses a bound.
            if inside and OVERLAP_IOU_MIN + 0.02 <= box_iou(a, b) <= OVERLAP_IOU_MAX - 0.02:
                boxes, start = [a, b], 2
                break
        else:
            return None
    for obj in objects[start:]:
        for _ in range(200):
            box = _sample_box(rng, SIZE_RANGES[obj["size"]], size_px)
            if all(box_iou(box, other) <= LOW_IOU_MAX - 0.01 for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _sample_objects(rng, pairs, overlap):
    n = int(rng.integers(2 if overlap else 1, MAX_OBJECTS + 1))
    objects = []
    for i in range(n):
        if overlap and i == 1:  # same shape and size class as object 0, any allowed colour
            shape, size = objects[0]["shape"], objects[0]["size"]
            colours = [c for c, s in pairs if s == shape]
            colour = colours[int(rng.integers(len(colours)))]
        else:
            colour, shape = pairs[int(rng.integers(len(pairs)))]
            size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append({"shape": shape, "colour": colour, "size": size})
    return objects


def _background(rng, size_px):
    base = rng.integers(25, 80, 3)
    image = np.broadcast_to(base, (size_px, size_px, 3)).astype(np.int32)
    if rng.random() < 0.5:  # lightly textured: smooth low-frequency blobs plus fine grain
        coarse = rng.integers(0, 256, (6, 6), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size_px, size_px),
                                                           Image.Resampling.BILINEAR), np.int32)
        image = image + (smooth[..., None] - 128) * 12 // 128
        image = image + rng.integers(-3, 4, (size_px, size_px, 1))
    return np.clip(image, 0, 255)


def _visible_enough(crops, size_px):
    """Whether every object keeps at least MIN_VISIBLE of its coverage unoccluded by the
    objects drawn after it."""
    covered = np.zeros((size_px, size_px), bool)
    for alpha, (r, c) in reversed(crops):
        window = covered[r:r + alpha.shape[0], c:c + alpha.shape[1]]
        total = int(alpha.sum())
        if total == 0 or int(alpha[~window].sum()) < MIN_VISIBLE * total:
            return False
        window |= alpha > 0
    return True


def make_scene(config, split, index, version=None):
    """Generates example `index` of `split` as plain NumPy / Python values (no TensorFlow).

    Returns a dict like a loaded example, with `objects` as NumPy arrays, plus `boxes_px`
    (n, 4) (x0, y0, x1, y1) pixel boxes.
    """
    version = ShapeScenes.VERSION if version is None else version
    rng = _example_rng(config, version, split, index)
    size_px = config.image_size
    pairs = HELD_OUT_PAIRS if split == "compositional_test" else SEEN_PAIRS
    overlap = is_overlap_index(index, config.split_size(split), config.overlap_fraction)
    while True:
        objects = _sample_objects(rng, pairs, overlap)
        boxes = _place(rng, objects, size_px, overlap)
        if boxes is None:
            continue
        if overlap:  # put the overlapping pair at random positions in the drawing order
            order = rng.permutation(len(objects))
            objects = [objects[i] for i in order]
            boxes = [boxes[i] for i in order]
        crops = [_render_crop(o["shape"], b, size_px) for o, b in zip(objects, boxes)]
        if _visible_enough(crops, size_px):
            break

    image = _background(rng, size_px)
    areas = []
    for obj, (alpha, (r, c)) in zip(objects, crops):
        alpha = alpha.astype(np.int32)[..., None]
        colour = np.clip(np.array(PALETTE[obj["colour"]]) + rng.integers(-12, 13, 3), 0, 255)
        window = image[r:r + alpha.shape[0], c:c + alpha.shape[1]]
        window[...] = (window * (255 - alpha) + colour * alpha + 127) // 255
        areas.append(float(alpha.sum()) / 255.0)
    boxes = np.array(boxes, np.float64)
    bbox = (boxes[:, [1, 0, 3, 2]] / size_px).astype(np.float32)  # ymin, xmin, ymax, xmax
    example = {
        "id": index + 1,
        "image": image.astype(np.uint8),
        "objects": {
            "bbox": bbox,
            "label": np.array([SHAPES.index(o["shape"]) for o in objects], np.int64),
            "colour": np.array([COLOURS.index(o["colour"]) for o in objects], np.int64),
            "size": np.array([SIZES.index(o["size"]) for o in objects], np.int64),
            "area": np.array(areas, np.float32),
        },
        "has_overlap": bool(overlap),
    }
    example["captions"] = make_captions(rng, objects, bbox)
    example["boxes_px"] = boxes
    return example


# ----------------------------------------------------------------------------- captions


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng, obj, with_size):
    words = []
    if with_size:
        options = SIZE_WORDS[obj["size"]]
        words.append(options[int(rng.integers(len(options)))])
    words += [obj["colour"], obj["shape"]]
    return f"{_article(words[0])} {' '.join(words)}"


def _group_phrase(rng, members, by_colour):
    """A phrase for objects sharing a shape (and colour when `by_colour`)."""
    first = members[0]
    if len(members) == 1:
        if by_colour:
            return _noun_phrase(rng, first, rng.random() < 0.5)
        return f"{'one' if rng.random() < 0.3 else 'a'} {first['shape']}"
    words = [NUMBER_WORDS[len(members)]]
    if by_colour:
        if len({m["size"] for m in members}) == 1 and rng.random() < 0.4:
            options = SIZE_WORDS[first["size"]]
            words.append(options[int(rng.integers(len(options)))])
        words.append(first["colour"])
    words.append(first["shape"] + "s")
    return " ".join(words)


def _join(items):
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _groups(objects, bbox, by_colour):
    """Objects grouped by (colour, shape) or shape, groups ordered left to right."""
    groups = {}
    for obj, box in zip(objects, bbox):
        key = (obj["colour"], obj["shape"]) if by_colour else obj["shape"]
        groups.setdefault(key, []).append((obj, box))
    ordered = sorted(groups.values(), key=lambda g: min(b[1] + b[3] for _, b in g))
    return [[o for o, _ in g] for g in ordered]


def _list_caption(rng, objects, bbox):
    groups = _groups(objects, bbox, by_colour=True)
    if rng.random() < 0.3:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    phrases = [_group_phrase(rng, g, True) for g in groups]
    prefixes = _PREFIXES_ONE if len(groups[0]) == 1 else _PREFIXES_MANY
    return prefixes[int(rng.integers(len(prefixes)))] + _join(phrases)


def _count_caption(rng, objects, bbox):
    n = len(objects)
    if n == 1:
        return f"a single {objects[0]['colour']} {objects[0]['shape']}"
    phrases = [_group_phrase(rng, g, False) for g in _groups(objects, bbox, by_colour=False)]
    if rng.random() < 0.5:
        return f"{NUMBER_WORDS[n]} shapes: {_join(phrases)}"
    return _join(phrases)


def _relation_caption(rng, objects, bbox):
    pairs = [(i, j, relation(bbox[i], bbox[j])) for i in range(len(objects))
             for j in range(len(objects)) if i < j]
    pairs = [p for p in pairs if p[2] is not None]
    if not pairs:
        return None
    i, j, rel = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        i, j, rel = j, i, INVERSE_RELATION[rel]
    options = RELATION_WORDS[rel]
    words = options[int(rng.integers(len(options)))]
    verb = "is " if rng.random() < 0.3 else ""
    a = _noun_phrase(rng, objects[i], rng.random() < 0.6)
    b = _noun_phrase(rng, objects[j], rng.random() < 0.6)
    return f"{a} {verb}{words} {b}"


def _region_caption(rng, objects, bbox):
    candidates = [(o, region(b)) for o, b in zip(objects, bbox) if region(b) is not None]
    if not candidates:
        return None
    obj, where = candidates[int(rng.integers(len(candidates)))]
    options = REGION_PHRASES[where]
    return f"{_noun_phrase(rng, obj, rng.random() < 0.5)} {options[int(rng.integers(len(options)))]}"


_TEMPLATES = (_list_caption, _count_caption, _relation_caption, _region_caption)


def make_captions(rng, objects, bbox):
    """NUM_CAPTIONS distinct reference captions for a scene (when its wordings allow).

    Every template is tried in turn in a random order, then random templates, so references
    mix listing, counting, relations and regions, in varied word order and wording.
    """
    captions = []
    order = list(rng.permutation(len(_TEMPLATES)))
    for _ in range(60):
        if len(captions) == NUM_CAPTIONS:
            break
        template = (_TEMPLATES[order.pop(0)] if order
                    else _TEMPLATES[int(rng.integers(len(_TEMPLATES)))])
        caption = template(rng, objects, bbox)
        if caption is not None and caption not in captions:
            captions.append(caption)
    while len(captions) < NUM_CAPTIONS:  # a scene with too few wordings repeats one
        captions.append(captions[len(captions) % max(1, len(captions))])
    return captions


# ----------------------------------------------------------------------------- TFDS builder


# Run as `python -m`, this file is `__main__`; the CLI then imports and uses the real module,
# which is the one that registers the builder (TFDS refuses a second registration).
class ShapeScenes(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """Generated scenes of coloured shapes with boxes, labels, captions (see module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 5 shapes x 6 colours x 2 sizes, 5 captions."}
    BUILDER_CONFIGS = list(CONFIGS.values())
    DEFAULT_CONFIG_NAME = "default"

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "id": np.int64,
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=SHAPES),
                    "colour": tfds.features.ClassLabel(names=COLOURS),
                    "size": tfds.features.ClassLabel(names=SIZES),
                    "area": np.float32,
                }),
                "captions": tfds.features.Sequence(tfds.features.Text(), length=NUM_CAPTIONS),
                "has_overlap": np.bool_,
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        _check_config(self.builder_config)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        config = self.builder_config
        n = config.split_size(split)
        jobs = [(config, split, start, min(n, start + _CHUNK), str(self.VERSION))
                for start in range(0, n, _CHUNK)]
        processes = generation_processes()
        if processes > 1 and n >= 2 * _CHUNK:
            # fork, not spawn: a spawned worker would re-import TensorFlow (seconds). Workers
            # run only NumPy and Pillow; examples come back in order, so output is unchanged.
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for batch in pool.imap(_encoded_scenes, jobs):
                    yield from batch
        else:
            for job in jobs:
                yield from _encoded_scenes(job)


_CHUNK = 250


def generation_processes():
    """Worker processes for generation: $KF_SHAPE_SCENES_PROCESSES, else min(4, CPUs); 1 runs
    in-process (also where fork is unavailable)."""
    value = os.environ.get("KF_SHAPE_SCENES_PROCESSES")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ConfigError(f"KF_SHAPE_SCENES_PROCESSES must be an integer, "
                              f"got {value!r}") from None
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _encoded_scenes(job):
    """Examples [start, stop) of a split as (key, example) with the image PNG-encoded."""
    config, split, start, stop, version = job
    out = []
    for index in range(start, stop):
        example = make_scene(config, split, index, version)
        del example["boxes_px"]
        buffer = io.BytesIO()
        Image.fromarray(example["image"]).save(buffer, format="png", compress_level=1)
        example["image"] = buffer.getvalue()
        out.append((index, example))
    return out


# ----------------------------------------------------------------------------- loading

OFFLINE_PREPARE_KWARGS = {
    "download_config": tfds.download.DownloadConfig(try_download_gcs=False),
}


def default_data_dir():
    """$KF_DATA_DIR, else runs/tfds under the current directory."""
    return os.environ.get("KF_DATA_DIR") or os.path.join("runs", "tfds")


def _resolve_config(config):
    if isinstance(config, ShapeScenesConfig):
        _check_config(config)
        return config
    if config not in CONFIGS:
        raise ConfigError(f"unknown shape_scenes config {config!r}; choose one of "
                          f"{', '.join(CONFIGS)} or pass a ShapeScenesConfig")
    return CONFIGS[config]


def builder(config="default", *, data_dir=None):
    """The prepared (built once, then cached) shape-scenes builder for `config`.

    Args:
        config: A name in CONFIGS or a ShapeScenesConfig.
        data_dir: TFDS data directory; default `default_data_dir()`.

    Raises:
        ConfigError: On an unknown config or bad sizes, or when the directory is unusable.
    """
    config = _resolve_config(config)
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    try:
        b = ShapeScenes(config=config, data_dir=data_dir)
        b.download_and_prepare(**OFFLINE_PREPARE_KWARGS)
    except ConfigError:
        raise
    except Exception as e:  # file-system errors have no common base class with TF's
        raise ConfigError(f"could not build shape_scenes/{config.name} in {data_dir}: "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}") from None
    return b


def load(split, *, config="default", data_dir=None, shuffle_files=False):
    """Loads one split of shape scenes as a tf.data.Dataset of example dicts (module doc).

    Builds the dataset into `data_dir` on first use (seconds), offline.

    Args:
        split: One of SPLITS (TFDS slicing such as "train[:10%]" works too).
        config: A name in CONFIGS ("default", "image96", "quick", "tiny") or a
            ShapeScenesConfig.
        data_dir: TFDS data directory; default `default_data_dir()`.
        shuffle_files: Passed to TFDS.

    Raises:
        ConfigError: On an unknown split or config, or a build failure.
    """
    b = builder(config, data_dir=data_dir)
    try:
        return b.as_dataset(split=split, shuffle_files=shuffle_files)
    except Exception as e:
        raise ConfigError(f"unknown shape_scenes split {split!r}; choose one of "
                          f"{', '.join(SPLITS)} ({type(e).__name__})") from None


# ----------------------------------------------------------------------------- picture grid


def show(examples, path, columns=4, scale=3):
    """Writes a PNG grid of examples (dicts of NumPy values) with boxes and their first caption."""
    examples = list(examples)
    if not examples:
        raise ConfigError("nothing to show")
    size = examples[0]["image"].shape[0] * scale
    text_h = 36
    rows = -(-len(examples) // columns)
    sheet = Image.new("RGB", (columns * (size + 4), rows * (size + text_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, ex in enumerate(examples):
        left = (k % columns) * (size + 4) + 2
        top = (k // columns) * (size + text_h + 4) + 2
        image = Image.fromarray(np.asarray(ex["image"])).resize((size, size),
                                                                Image.Resampling.NEAREST)
        sheet.paste(image, (left, top))
        labels = ex["objects"]["label"]
        for box, label in zip(np.asarray(ex["objects"]["bbox"]), labels):
            y0, x0, y1, x1 = (float(v) * size for v in box)
            draw.rectangle([left + x0, top + y0, left + x1 - 1, top + y1 - 1],
                           outline=(255, 255, 255))
            draw.text((left + x0 + 1, top + y0), SHAPES[int(label)][:2], fill=(255, 255, 255))
        caption = ex["captions"][0]
        caption = caption.decode() if isinstance(caption, bytes) else str(caption)
        words, lines = caption.split(), [""]
        for word in words:  # wrap into at most three lines under the image
            if len(lines[-1]) + len(word) + 1 > size // 6 and lines[-1]:
                lines.append("")
            lines[-1] = (lines[-1] + " " + word).strip()
        draw.text((left, top + size + 1), "\n".join(lines[:3]), fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.data.shape_scenes",
        description="Build the shape-scenes dataset and/or write a PNG grid of examples.")
    parser.add_argument("--config", default="quick", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--split", default="train", help=f"one of {', '.join(SPLITS)}")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS data directory (default $KF_DATA_DIR or runs/tfds)")
    parser.add_argument("--show", type=int, default=16, help="examples in the grid (0: none)")
    parser.add_argument("--out", default="shape_scenes.png", help="where to write the grid")
    args = parser.parse_args(argv)
    try:
        if args.show < 0:
            raise ConfigError(f"--show must be >= 0, got {args.show}")
        import time

        start = time.perf_counter()
        b = builder(args.config, data_dir=args.data_dir)
        print(f"shape_scenes/{b.builder_config.name} {b.version} ready in {b.data_dir} "
              f"({time.perf_counter() - start:.1f} s)")
        if args.show:
            ds = b.as_dataset(split=args.split).take(args.show)
            print("wrote", show(tfds.as_numpy(ds), args.out))
    except ConfigError as e:
        print(f"shape_scenes: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from experiments.data import shape_scenes as _registered

    sys.exit(_registered.main())
