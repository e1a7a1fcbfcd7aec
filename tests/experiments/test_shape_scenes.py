"""Tests for experiments.data.shape_scenes: determinism, boxes, captions, overlap share, the
compositional split, the TFDS build and load with the network absent, and the picture grid."""

import dataclasses
import hashlib
import itertools
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.data import shape_scenes as ss
from experiments.runtime.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# sha256 over the pixels and captions of train examples 0-3 of the "tiny" config, version 1.0.0.
# If this changes, the generator's output changed: bump ShapeScenes.VERSION and update it.
EXPECTED_CHECKSUM = "89e967d4fea4e79ab38fe3ee06af11639f6c6743678e955d400deeae875583dd"


def _scenes(config, split, n, start=0):
    return [ss.make_scene(config, split, i) for i in range(start, start + n)]


def _checksum(examples):
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex["image"].tobytes())
        for caption in ex["captions"]:
            digest.update(caption.encode())
        digest.update(ex["objects"]["bbox"].tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_images():
    tiny = ss.CONFIGS["tiny"]
    first = _scenes(tiny, "train", 4)
    again = _scenes(tiny, "train", 4)
    assert _checksum(first) == _checksum(again)
    assert _checksum(first) == EXPECTED_CHECKSUM
    reseeded = _scenes(dataclasses.replace(tiny, seed=1), "train", 4)
    for a, b in zip(first, reseeded):
        assert not np.array_equal(a["image"], b["image"])
    # Splits draw from different streams too.
    validation = _scenes(tiny, "validation", 4)
    assert all(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, validation))
    # An example does not depend on the split size (only on seed, version, split, index),
    # except through its overlap flag, which tiny and quick place identically at index 4.
    quick = ss.make_scene(ss.CONFIGS["quick"], "train", 4)
    assert np.array_equal(quick["image"], ss.make_scene(tiny, "train", 4)["image"])


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("image_size,split", [(64, "train"), (96, "compositional_test")])
def test_boxes_inside_image_and_match_rendered_extent(image_size, split):
    config = dataclasses.replace(ss.CONFIGS["quick"], image_size=image_size)
    checked = 0
    for ex in _scenes(config, split, 60):
        objects = ex["objects"]
        bbox = objects["bbox"]
        n = len(bbox)
        assert 1 <= n <= ss.MAX_OBJECTS and ex["image"].shape == (image_size, image_size, 3)
        assert bbox.dtype == np.float32 and bbox.shape == (n, 4)
        assert np.all(bbox >= 0) and np.all(bbox <= 1)
        assert np.all(bbox[:, 2] > bbox[:, 0]) and np.all(bbox[:, 3] > bbox[:, 1])
        masks = []
        for k in range(n):
            shape = ss.SHAPES[objects["label"][k]]
            mask = ss.render_mask(shape, ex["boxes_px"][k], image_size)
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            extent = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], float)
            np.testing.assert_allclose(extent, bbox[k] * image_size, atol=1.0)
            assert objects["area"][k] == pytest.approx(mask.sum() / 255, rel=1e-4)
            masks.append(mask)
            checked += 1
        # Every pixel fully covered by an object and by no object drawn later shows its colour
        # (palette +- the 12-level jitter), so the boxes describe what was drawn.
        for k in range(n):
            later = np.zeros_like(masks[k], bool)
            for m in masks[k + 1:]:
                later |= m > 0
            own = (masks[k] == 255) & ~later
            assert own.sum() > 0.3 * objects["area"][k]  # generation keeps >= 50% visible
            colour = np.array(ss.PALETTE[ss.COLOURS[objects["colour"][k]]])
            pixels = ex["image"][own].astype(int)
            assert np.all(np.abs(pixels - pixels[0]) == 0)  # one flat colour per object
            assert np.all(np.abs(pixels[0] - colour) <= 12)
        # Size classes are told apart by the box side.
        sides = (bbox[:, 2] - bbox[:, 0])
        small = objects["size"] == ss.SIZES.index("small")
        assert np.all(sides[small] <= 0.21) and np.all(sides[~small] >= 0.27)
    assert checked > 120


# ----------------------------------------------------------------------------- captions

_DETERMINERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_SIZE_OF_WORD = {w: size for size, words in ss.SIZE_WORDS.items() for w in words}
_RELATIONS = {}
for _rel, _phrases in ss.RELATION_WORDS.items():
    for _phrase in _phrases:
        _RELATIONS[_phrase] = _rel
        _RELATIONS["is " + _phrase] = _rel
_REGIONS = {phrase: where for where, phrases in ss.REGION_PHRASES.items() for phrase in phrases}
_PREFIXES = {"", "there is", "there are", "a picture of", "an image with"}


def _parse(caption):
    """Noun phrases (start, end, count, size, colour, shape), an optional total ("N shapes:")
    and the glue text before, between and after them."""
    tokens = caption.replace(",", " , ").replace(":", " : ").split()
    phrases, total, i = [], None, 0
    while i < len(tokens):
        det = tokens[i]
        if det not in _DETERMINERS:
            i += 1
            continue
        j = i + 1
        if det == "a" and j < len(tokens) and tokens[j] == "single":
            j += 1
        size = colour = None
        if j < len(tokens) and tokens[j] in _SIZE_OF_WORD:
            size, j = _SIZE_OF_WORD[tokens[j]], j + 1
        if j < len(tokens) and tokens[j] in ss.COLOURS:
            colour, j = tokens[j], j + 1
        count = _DETERMINERS[det]
        word = tokens[j] if j < len(tokens) else ""
        if count > 1 and word == "shapes" and size is None and colour is None:
            total, i = count, j + 1
        elif (count == 1 and word in ss.SHAPES) or (count > 1 and word[:-1] in ss.SHAPES
                                                     and word.endswith("s")):
            phrases.append((i, j + 1, count, size, colour, word.rstrip("s")
                            if count > 1 else word))
            i = j + 1
        else:
            i += 1
    bounds = [0] + [p for ph in phrases for p in ph[:2]] + [len(tokens)]
    glue = [" ".join(tokens[bounds[k]:bounds[k + 1]]) for k in range(0, len(bounds), 2)]
    return tokens, phrases, total, glue


def _matches(obj, phrase):
    _, _, _, size, colour, shape = phrase
    return (obj["shape"] == shape and (colour is None or obj["colour"] == colour)
            and (size is None or obj["size"] == size))


def _relation(a, b):
    """Independent restatement of the documented rule, from normalised box centres."""
    dy = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dx = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) >= 0.15 and abs(dx) >= 1.5 * abs(dy):
        return "left" if dx > 0 else "right"
    if abs(dy) >= 0.15 and abs(dy) >= 1.5 * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def _region(box):
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    col = "left" if cx < 1 / 3 else "centre" if cx < 2 / 3 else "right"
    return row, col


def _check_caption(caption, objects, bbox):
    """Asserts the caption says only true things about the scene; returns its kind."""
    tokens, phrases, total, glue = _parse(caption)
    assert set(tokens) <= set(ss.VOCABULARY), caption
    assert phrases, caption
    n = len(objects)
    inner = glue[1:-1]
    if len(phrases) == 2 and inner[0] in _RELATIONS:
        rel = _RELATIONS[inner[0]]
        assert glue[0] == "" and glue[-1] == "" and all(p[2] == 1 for p in phrases), caption
        assert any(_relation(bbox[a], bbox[b]) == rel
                   for a, b in itertools.permutations(range(n), 2)
                   if _matches(objects[a], phrases[0]) and _matches(objects[b], phrases[1])), \
            caption
        return "relation"
    if len(phrases) == 1 and glue[-1] in _REGIONS:
        assert glue[0] == "" and phrases[0][2] == 1, caption
        assert any(_region(bbox[k]) == _REGIONS[glue[-1]] for k in range(n)
                   if _matches(objects[k], phrases[0])), caption
        return "region"
    # A list: the phrases partition the objects, each count exact.
    assert glue[-1] == "", caption
    assert glue[0] in _PREFIXES or (
        total is not None and glue[0] == f"{ss.NUMBER_WORDS[total]} shapes :"), caption
    assert all(g in {",", "and"} for g in inner), caption
    assert sum(p[2] for p in phrases) == n, caption
    for phrase in phrases:
        assert sum(_matches(o, phrase) for o in objects) == phrase[2], caption
    if total is not None:
        assert total == n, caption
    if "single" in tokens:
        assert n == 1, caption
    return "list"


def test_captions_state_only_true_counts_colours_and_relations():
    kinds = {"relation": 0, "region": 0, "list": 0}
    distinct = []
    for split in ("train", "compositional_test"):
        for ex in _scenes(ss.CONFIGS["quick"], split, 150):
            o = ex["objects"]
            objects = [{"shape": ss.SHAPES[o["label"][k]], "colour": ss.COLOURS[o["colour"][k]],
                        "size": ss.SIZES[o["size"][k]]} for k in range(len(o["label"]))]
            assert len(ex["captions"]) == ss.NUM_CAPTIONS
            for caption in ex["captions"]:
                kinds[_check_caption(caption, objects, o["bbox"])] += 1
            distinct.append(len(set(ex["captions"])))
    # References vary: nearly always 5 different sentences, and every kind occurs often.
    assert np.mean(distinct) > 4.8 and min(distinct) >= 3
    assert min(kinds.values()) > 200, kinds


def test_caption_parser_rejects_false_captions():
    objects = [{"shape": "circle", "colour": "red", "size": "small"},
               {"shape": "square", "colour": "blue", "size": "large"}]
    bbox = np.array([[0.4, 0.1, 0.55, 0.25], [0.35, 0.6, 0.7, 0.95]])
    assert _check_caption("a small red circle to the left of a large blue square",
                          objects, bbox) == "relation"
    assert _check_caption("two shapes: a circle and a square", objects, bbox) == "list"
    for wrong in ("a small red circle to the right of a large blue square",
                  "a red circle and a green square", "two circles",
                  "three shapes: a circle and a square", "a large red circle on the left",
                  "a blue square on the left"):
        with pytest.raises(AssertionError):
            _check_caption(wrong, objects, bbox)


# ----------------------------------------------------------------------------- overlap


def _iou(a, b):
    ih = min(a[2], b[2]) - max(a[0], b[0])
    iw = min(a[3], b[3]) - max(a[1], b[1])
    if ih <= 0 or iw <= 0:
        return 0.0
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_share_of_overlapping_same_class_pairs(fraction):
    n = 100
    config = dataclasses.replace(ss.CONFIGS["quick"], validation=n, overlap_fraction=fraction)
    flagged = 0
    for ex in _scenes(config, "validation", n):
        bbox, label = ex["objects"]["bbox"], ex["objects"]["label"]
        ious = {(a, b): _iou(bbox[a], bbox[b])
                for a, b in itertools.combinations(range(len(bbox)), 2)}
        high = [p for p, v in ious.items() if v > ss.LOW_IOU_MAX]
        if ex["has_overlap"]:
            flagged += 1
            assert len(high) == 1, ious
            (a, b), = high
            assert label[a] == label[b]
            assert ss.OVERLAP_IOU_MIN <= ious[(a, b)] <= ss.OVERLAP_IOU_MAX
        else:
            assert not high, ious
    assert flagged == int(n * fraction)


# ----------------------------------------------------------------------------- splits


def test_compositional_split_holds_no_train_pair():
    quick = ss.CONFIGS["quick"]
    pairs = {}
    for split, n in (("train", 300), ("validation", 60), ("test", 60),
                     ("compositional_test", 100)):
        pairs[split] = {(ss.COLOURS[c], ss.SHAPES[s]) for ex in _scenes(quick, split, n)
                        for c, s in zip(ex["objects"]["colour"], ex["objects"]["label"])}
    held_out = set(ss.HELD_OUT_PAIRS)
    assert pairs["compositional_test"] == held_out
    for split in ("train", "validation", "test"):
        assert not pairs[split] & held_out
    assert len(pairs["train"]) == len(ss.COLOURS) * len(ss.SHAPES) - len(held_out)
    # Each held-out colour and shape is seen in train, only not together.
    assert {c for c, _ in pairs["train"]} == set(ss.COLOURS)
    assert {s for _, s in pairs["train"]} == set(ss.SHAPES)


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or DNS lookup, and any TFDS look at gs://, fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    from tensorflow_datasets.core.utils import gcs_utils
    # Every GCS lookup in TFDS goes through `exists` (gs:// paths) or the downloaders.
    monkeypatch.setattr(gcs_utils, "exists", refuse)
    monkeypatch.setattr(gcs_utils, "download_gcs_folder", refuse)
    monkeypatch.setattr(gcs_utils, "download_gcs_dataset", refuse)


def test_build_and_load_offline(tmp_path, no_network):
    tiny = ss.CONFIGS["tiny"]
    data_dir = str(tmp_path / "tfds")
    splits = {split: ss.load(split, config="tiny", data_dir=data_dir) for split in ss.SPLITS}
    builder = ss.builder("tiny", data_dir=data_dir)
    assert builder.info.version == ss.ShapeScenes.VERSION
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        split: tiny.split_size(split) for split in ss.SPLITS}
    train = list(tfds.as_numpy(splits["train"]))
    assert sorted(ex["id"] for ex in train) == list(range(1, tiny.train + 1))
    by_id = {int(ex["id"]): ex for ex in train}
    for index in (0, 5, 17):
        want, got = ss.make_scene(tiny, "train", index), by_id[index + 1]
        np.testing.assert_array_equal(got["image"], want["image"])  # PNG is lossless
        assert got["image"].dtype == np.uint8
        np.testing.assert_allclose(got["objects"]["bbox"], want["objects"]["bbox"], atol=1e-6)
        for key in ("label", "colour", "size"):
            np.testing.assert_array_equal(got["objects"][key], want["objects"][key])
        assert got["objects"]["area"].dtype == np.float32
        assert [c.decode() for c in got["captions"]] == want["captions"]
        assert bool(got["has_overlap"]) == want["has_overlap"]
    assert sum(bool(ex["has_overlap"]) for ex in train) == int(tiny.train * 0.2)
    # tfds.load finds the registered builder and reads the same cache, without a network.
    same = tfds.load("shape_scenes/tiny", split="compositional_test", data_dir=data_dir,
                     download_and_prepare_kwargs=ss.OFFLINE_PREPARE_KWARGS)
    assert len(list(same)) == tiny.compositional_test
    # A custom config (any sizes) builds as well.
    custom = dataclasses.replace(tiny, name="custom", train=3, validation=2, test=2,
                                 compositional_test=2, image_size=48)
    image = next(iter(tfds.as_numpy(ss.load("train", config=custom, data_dir=data_dir))))["image"]
    assert image.shape == (48, 48, 3)


def test_bad_input_is_one_line_config_error(tmp_path):
    for call in (lambda: ss.load("train", config="huge", data_dir=str(tmp_path)),
                 lambda: ss.load("train", data_dir=str(tmp_path),
                                 config=dataclasses.replace(ss.CONFIGS["tiny"], train=0)),
                 lambda: ss.load("nope", config="tiny", data_dir=str(tmp_path))):
        with pytest.raises(ConfigError) as info:
            call()
        assert "\n" not in str(info.value) and str(info.value)


def _can_unshare_network():
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_cli_builds_offline_and_writes_grid(tmp_path):
    """`--show` builds the tiny config and writes the grid, in a process with no network
    namespace where the OS allows one (`unshare -rn`), else with sockets refused in-process."""
    out = tmp_path / "grid.png"
    args = [sys.executable, "-m", "experiments.data.shape_scenes", "--config=tiny", "--show=6",
            f"--out={out}", f"--data_dir={tmp_path / 'tfds'}"]
    if _can_unshare_network():
        args = ["unshare", "-rn"] + args
    else:
        guard = ("import socket, runpy, sys\n"
                 "def refuse(*a, **k): raise OSError('network disabled')\n"
                 "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
                 "sys.argv = ['shape_scenes'] + sys.argv[1:]\n"
                 "runpy.run_module('experiments.data.shape_scenes', run_name='__main__')\n")
        args = [sys.executable, "-c", guard] + args[3:]
    env = dict(os.environ, KF_SHAPE_SCENES_PROCESSES="1")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[1] == 4 * (64 * 3 + 4)  # 4 columns, 2 rows
    assert grid.shape[0] == 2 * (64 * 3 + 36 + 4)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert ss.main(["--config=nope", f"--data_dir={tmp_path}"]) == 2
    assert ss.main(["--config=tiny", "--show=-1", f"--data_dir={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["shape_scenes: error: unknown shape_scenes config 'nope'; choose one of "
                     "default, image96, quick, tiny or pass a ShapeScenesConfig",
                     "shape_scenes: error: --show must be >= 0, got -1"]


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name,split", [("coco_captions", "validation"), ("voc", "train"),
                                        ("coco", "validation")])
def test_real_datasets_map_to_the_same_structure(name, split):
    from experiments.data import real_scenes

    with tfds.testing.mock_data(num_examples=3):
        examples = list(tfds.as_numpy(real_scenes.load_real(name, split)))
        num_classes = len(real_scenes.class_names(name))
    assert len(examples) == 3
    for i, ex in enumerate(examples):
        assert set(ex) == {"id", "image", "objects", "captions", "has_overlap"}
        assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3
        assert ex["image"].shape[-1] == 3
        n = len(ex["objects"]["label"])
        assert ex["objects"]["bbox"].shape == (n, 4) and ex["objects"]["bbox"].dtype == np.float32
        assert ex["objects"]["label"].dtype == np.int64 and ex["objects"]["area"].shape == (n,)
        assert np.all((ex["objects"]["label"] >= 0) & (ex["objects"]["label"] < num_classes))
        assert ex["captions"].shape == (ss.NUM_CAPTIONS,)
        if name == "coco_captions":
            assert ex["captions"][0] != b""
        else:
            assert all(c == b"" for c in ex["captions"])
        if name == "voc":
            assert ex["id"] == i + 1
        expected_overlap = any(
            ex["objects"]["label"][a] == ex["objects"]["label"][b]
            and _iou(ex["objects"]["bbox"][a], ex["objects"]["bbox"][b]) >= ss.OVERLAP_IOU_MIN
            for a, b in itertools.combinations(range(n), 2))
        assert bool(ex["has_overlap"]) == expected_overlap


def test_real_overlap_flag_and_errors(tmp_path):
    from experiments.data import real_scenes

    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0.1, 0.5, 0.6], [0.6, 0.6, 1, 1]], np.float32)
    iou = real_scenes.pairwise_iou(boxes).numpy()
    assert iou[0, 1] == pytest.approx(0.4 / 0.6) and iou[0, 2] == 0 and iou[1, 1] == 1
    assert bool(real_scenes.has_same_class_overlap(boxes, np.array([1, 1, 2])))
    assert not bool(real_scenes.has_same_class_overlap(boxes, np.array([1, 2, 1])))
    with pytest.raises(ConfigError, match="unknown real scenes dataset 'imagenet'"):
        real_scenes.load_real("imagenet", "train")
    with pytest.raises(ConfigError) as info:  # an empty data_dir: no download, one line
        real_scenes.load_real("voc", "train", data_dir=str(tmp_path))
    assert "\n" not in str(info.value) and "--data_dir" in str(info.value)
