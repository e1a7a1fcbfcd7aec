"""Non-max suppression (greedy hard NMS and Gaussian soft-NMS), batched and XLA-compilable.

Greedy NMS: visit the boxes by descending score (equal scores: lower index first) among those with
score > `score_threshold`; select a box unless its IoU with an already selected box is strictly
greater than `iou_threshold` (IoU exactly equal to the threshold is kept); stop after
`max_output_size` selections. The result is identical to `tf.image.non_max_suppression`.

Soft-NMS (Bodla et al. 2017, "Soft-NMS -- Improving Object Detection With One Line of Code",
Gaussian variant), used when `soft_nms_sigma > 0`: repeatedly select the box with the highest
current score s_i, then decay every remaining score by the rule of TensorFlow's kernel
(`tensorflow/core/kernels/image/non_max_suppression_op.cc`):

    s_j <- s_j * exp(scale * IoU(b_i, b_j)^2),   scale = -0.5 / soft_nms_sigma

(so the paper's sigma^2 is TF's `soft_nms_sigma`), dropping boxes whose score falls to
<= `score_threshold`. `iou_threshold` plays no part in soft-NMS, as in TF. The selected boxes and
their decayed scores equal `tf.image.non_max_suppression_with_scores` for non-negative scores.

Class-aware NMS (`classes=`, `NonMaxSuppression(class_aware=True)`): per-class NMS in one pass.
A box is suppressed only by a selected box of its own class (IoU > `iou_threshold` and equal
class ids; soft-NMS decays only its own class), so the selection is exactly the union of
independent per-class runs, merged in the one greedy order (score, then index). Pairs of
different classes are masked out of the IoU test rather than separated by torchvision's
coordinate offset (`batched_nms`: shift each class by class_id * (span + 1)), which would
recompute the IoUs on shifted coordinates and could flip a decision in the last bit. One pass
over all candidates replaces one NMS per (image, class), whose mostly empty classes each paid a
sort and a selection loop.

How hard NMS is computed (the idea of TF Model Garden's `sorted_non_max_suppression_padded`, with
a different inner step): the candidates are sorted by `tf.math.top_k` (stable) and processed in
blocks (by default 1/4 of `max_output_size`, clamped to [32, 512]). Each block is first
suppressed by the boxes selected so far (in one comparison while that buffer holds <= 256 boxes,
else tile by tile over its filled part); the block's survivors then suppress each other in sorted
order, which is the unique fixed point of

    keep_i = alive_i and not any_{j<i}(keep_j and IoU_ij > iou_threshold),

reached by iterating that equation (sweep k settles box k at the latest, usually far sooner).
Selection stops as soon as `max_output_size` boxes are kept, and only the top
`2 * max_output_size` scores are sorted until more are needed: top_k is stable, so that prefix is
the full sort's prefix and a second stage resumes where the first stopped.

Class-wise NMS of multi-class scores (`multiclass_non_max_suppression`, hard NMS) has its own
path, written for a detector's outputs (N boxes x C classes, most scores far below the score
threshold): the boxes with no class over the threshold are compacted away (they can neither be
selected nor suppress), then one loop per batch selects, per image, the best live (class, box)
candidate, writes it out and suppresses the boxes of its class with IoU over the threshold
against it: C++'s greedy order without any sort (argmax-and-suppress gives the same selection
as greedy NMS over sorted candidates), at most `max_output_size` steps, each O(live boxes).
The compacted width is the smallest power of two (from 16; or N) that holds every image's live
boxes, chosen inside the program: one branch per width, each with its own loop, so every shape
is static (also inside a caller's XLA program) and no op runs outside the program. The images
of a batch step together, as long as the longest; in a batch of 64 or more, once at most a
quarter of them have candidates left, those finish in a loop of their own. The loop writes with
selects, never scatters, so that XLA's CPU backend can compile the whole loop into one kernel
once `hoist_small_xla_cpu_loops()` has raised its size limit for that (as
`experiments.nms_detection` does), instead of dispatching the loop's ~26 kernels one by one at
every step.

Every shape is static. By default each stage's selection loop is one XLA program (`jit_compile`),
which cuts the loop overheads that dominate on CPU; the sort stays outside XLA, whose CPU sort is
several times slower (inside a caller's `jit_compile=True` function it cannot, so large N is
slower there). It is written with TensorFlow ops (`tf.while_loop`, `tf.math.top_k`,
`tf.tensor_scatter_nd_update`, `tf.function(jit_compile=...)`) on purpose: the data-dependent
loop with early exit is the point, and keras.ops has no while loop with early exit, scatter into
a padded buffer and per-call XLA compilation at the same speed. IoUs come from
`layers.boxes.pairwise_iou` (keras.ops).
"""

import functools
import math
import os

import keras
import tensorflow as tf

from layers.boxes import pairwise_iou
from layers.registration import register


def _round_up(x, multiple):
    return -(-x // multiple) * multiple


def _static_int(x):
    """Returns `x` as a Python int if it is known at trace time, else None."""
    if isinstance(x, int):
        return x
    value = tf.get_static_value(x)
    return None if value is None else int(value)


def _gather_rows(values, indices):
    """values (b, n, ...) gathered along axis 1 by indices (b, k)."""
    return tf.gather(values, indices, batch_dims=1)


def _self_suppression(iou_gt, alive):
    """Greedy NMS inside one block of sorted candidates.

    Args:
        iou_gt: bool (b, B, B), True where IoU(i, j) > threshold.
        alive: bool (b, B), candidates not suppressed by earlier blocks.

    Returns:
        bool (b, B), the boxes greedy NMS keeps.
    """
    size = tf.shape(alive)[1]
    rows = tf.range(size)
    earlier = rows[None, :] < rows[:, None]  # [i, j]: j comes before i
    # suppressors[b, i, j]: an alive, earlier box j overlapping box i.
    suppressors = tf.logical_and(tf.logical_and(iou_gt, earlier[None]), alive[:, None, :])

    def sweep(keep):
        hit = tf.reduce_any(tf.logical_and(suppressors, keep[:, None, :]), axis=2)
        return tf.logical_and(alive, tf.logical_not(hit))

    def step(keep, _):
        # Two sweeps per loop iteration halve the loop's fixed costs; extra sweeps past the
        # fixed point change nothing.
        new_keep = sweep(sweep(keep))
        return new_keep, tf.reduce_any(tf.not_equal(new_keep, keep))

    keep, _ = tf.while_loop(
        lambda keep, changed: changed, step, (alive, tf.constant(True)), maximum_iterations=size
    )
    return keep


def _overlapping(boxes_a, classes_a, boxes_b, classes_b, iou_threshold):
    """bool (b, n, m): IoU > threshold and, when classes are given, the same class."""
    overlap = pairwise_iou(boxes_a, boxes_b) > iou_threshold
    if classes_a is None:
        return overlap
    return tf.logical_and(overlap, classes_a[:, :, None] == classes_b[:, None, :])


def _hard_nms_blocks(
    state, boxes, classes, top_scores, top_idx, max_out, iou_threshold, score_threshold, block,
    padded,
):
    """Runs the sorted candidates [state.pos, k) through greedy NMS, block by block.

    state = (pos, count (b,), sel_boxes (b, cap+1, 4), sel_scores, sel_idx[, sel_classes]);
    slot `cap` of the selection buffers is a trash slot that absorbs the writes of rejected
    candidates. `classes` (b, N) int32 or None: with classes, only boxes of the same class
    suppress each other (and `state` carries the selected boxes' classes).
    `top_scores`, `top_idx` (b, k) are the output of `tf.math.top_k`; they are padded here to
    `padded`, a multiple of `block`, so that every block is a full static-size window.
    """
    cap = state[2].shape[1] - 1
    stop = top_scores.shape[1]
    pad = padded - stop
    aware = classes is not None
    box_idx, cls_idx = top_idx, (_gather_rows(classes, top_idx) if aware else None)
    sorted_boxes = tf.pad(_gather_rows(boxes, box_idx), [[0, 0], [0, pad], [0, 0]])
    sorted_scores = tf.pad(top_scores, [[0, 0], [0, pad]], constant_values=-math.inf)
    sorted_idx = tf.pad(top_idx, [[0, 0], [0, pad]])
    sorted_cls = tf.pad(cls_idx, [[0, 0], [0, pad]]) if aware else None
    batch = tf.shape(sorted_scores)[0]
    lane = tf.range(block)
    batch_ids = tf.tile(tf.range(batch)[:, None], [1, block])

    def active(pos, count):
        # An image needs more work while it has room and its next candidate passes the threshold.
        head = tf.gather(sorted_scores, tf.minimum(pos, stop - 1), axis=1)
        return tf.logical_and(count < max_out, head > score_threshold)

    def cond(pos, count, *_):
        return tf.logical_and(pos < stop, tf.reduce_any(active(pos, count)))

    def body(pos, count, sel_boxes, sel_scores, sel_idx, *sel_cls):
        # tf.slice keeps the size static (XLA's dynamic_slice); the inputs are padded to a
        # multiple of `block`, so the window never runs off the end.
        cand_boxes = tf.slice(sorted_boxes, [0, pos, 0], [-1, block, 4])
        cand_scores = tf.slice(sorted_scores, [0, pos], [-1, block])
        cand_idx = tf.slice(sorted_idx, [0, pos], [-1, block])
        cand_cls = tf.slice(sorted_cls, [0, pos], [-1, block]) if aware else None
        sel_cls = sel_cls[0] if aware else None
        alive = tf.logical_and(cand_scores > score_threshold, (pos + lane < stop)[None])
        alive = tf.logical_and(alive, active(pos, count)[:, None])

        # Suppression by the boxes already selected: a small buffer in one comparison, a large
        # one (block x block) tile at a time over its filled part.
        # Class-aware NMS goes tile by tile always: few of the buffer's slots are filled
        # while the (longer) class-aware candidate lists are scanned (measured on CPU).
        if cap <= SINGLE_TILE_MAX and not aware:
            overlap = tf.logical_and(
                _overlapping(
                    cand_boxes, cand_cls, sel_boxes[:, :cap],
                    sel_cls[:, :cap] if aware else None, iou_threshold,
                ),
                (tf.range(cap)[None, :] < count[:, None])[:, None, :],
            )
            alive = tf.logical_and(alive, tf.logical_not(tf.reduce_any(overlap, axis=2)))
        else:
            num_tiles = (tf.reduce_max(count) + block - 1) // block

            def tile_body(t, alive):
                tile = tf.slice(sel_boxes, [0, t * block, 0], [-1, block, 4])
                tile_cls = tf.slice(sel_cls, [0, t * block], [-1, block]) if aware else None
                tile_valid = (t * block + lane)[None, :] < count[:, None]
                overlap = tf.logical_and(
                    _overlapping(cand_boxes, cand_cls, tile, tile_cls, iou_threshold),
                    tile_valid[:, None, :],
                )
                suppressed = tf.reduce_any(overlap, axis=2)
                return t + 1, tf.logical_and(alive, tf.logical_not(suppressed))

            _, alive = tf.while_loop(
                lambda t, alive: tf.logical_and(t < num_tiles, tf.reduce_any(alive)),
                tile_body,
                (tf.constant(0), alive),
            )

        def keep_survivors():
            return _self_suppression(
                _overlapping(cand_boxes, cand_cls, cand_boxes, cand_cls, iou_threshold), alive
            )

        keep = tf.cond(tf.reduce_any(alive), keep_survivors, lambda: alive)

        # Append the kept boxes, in sorted order, after the ones already selected.
        slot = count[:, None] + tf.cumsum(tf.cast(keep, tf.int32), axis=1) - 1
        keep = tf.logical_and(keep, slot < max_out)
        slot = tf.where(keep, slot, cap)
        where = tf.stack([batch_ids, slot], axis=-1)
        sel_boxes = tf.tensor_scatter_nd_update(sel_boxes, where, cand_boxes)
        sel_scores = tf.tensor_scatter_nd_update(sel_scores, where, cand_scores)
        sel_idx = tf.tensor_scatter_nd_update(sel_idx, where, cand_idx)
        count = count + tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
        if aware:
            sel_cls = (tf.tensor_scatter_nd_update(sel_cls, where, cand_cls),)
        else:
            sel_cls = ()
        return (pos + block, count, sel_boxes, sel_scores, sel_idx) + sel_cls

    return tf.while_loop(cond, body, tuple(state))


def _soft_nms_loop(
    boxes, scores, classes, max_out, score_threshold, scale, cap_padded, cap, padded
):
    """Gaussian soft-NMS by repeated argmax; returns (sel_idx, sel_scores, count, sel_boxes).

    The boxes are padded to `padded` (never-selected -inf scores) so that few sizes compile.
    With `classes` (b, N) int32, a selected box decays only the scores of its own class.
    """
    if classes is not None:
        classes = tf.pad(classes, [[0, 0], [0, padded - classes.shape[1]]])
    boxes = tf.pad(boxes, [[0, 0], [0, padded - boxes.shape[1]], [0, 0]])
    scores = tf.pad(scores, [[0, 0], [0, padded - scores.shape[1]]], constant_values=-math.inf)
    batch = tf.shape(scores)[0]
    num_boxes = padded
    positions = tf.range(num_boxes)
    batch_range = tf.range(batch)

    # `current` holds each box's decayed score, -inf once it is selected or drops to or below
    # the threshold, so `current > score_threshold` marks the live boxes.
    def cond(step, current, *_):
        return tf.logical_and(step < max_out, tf.reduce_any(current > score_threshold))

    def body(step, current, sel_scores, sel_idx, count):
        # Best live score; equal scores go to the lower index, as in TF's priority queue.
        best = tf.reduce_max(current, axis=1, keepdims=True)
        pick = tf.reduce_min(tf.where(current == best, positions[None, :], num_boxes - 1), axis=1)
        took = best[:, 0] > score_threshold
        write = tf.stack([batch_range, tf.where(took, step, cap_padded)], axis=-1)
        sel_scores = tf.tensor_scatter_nd_update(sel_scores, write, best[:, 0])
        sel_idx = tf.tensor_scatter_nd_update(sel_idx, write, pick)
        count = count + tf.cast(took, tf.int32)

        iou = pairwise_iou(_gather_rows(boxes, pick[:, None]), boxes)[:, 0, :]
        if classes is not None:
            # exp(scale * 0 * 0) is exactly 1: other classes keep their scores bit for bit.
            same = _gather_rows(classes, pick[:, None]) == classes
            iou = tf.where(same, iou, 0.0)
        # TF's order of operations: exp((scale * iou) * iou), then one multiply per selection.
        decayed = current * tf.exp(scale * iou * iou)
        decayed = tf.where(positions[None, :] == pick[:, None], -math.inf, decayed)
        # A NaN from -inf * 0 also fails the comparison and becomes -inf.
        current = tf.where(decayed > score_threshold, decayed, -math.inf)
        return step + 1, current, sel_scores, sel_idx, count

    state = (
        tf.constant(0),
        tf.where(scores > score_threshold, scores, -math.inf),
        tf.zeros([batch, cap_padded + 1], scores.dtype),
        tf.zeros([batch, cap_padded + 1], tf.int32),
        tf.zeros([batch], tf.int32),
    )
    _, _, sel_scores, sel_idx, count = tf.while_loop(cond, body, state)
    sel_idx, sel_scores = sel_idx[:, :cap], sel_scores[:, :cap]
    valid = tf.range(cap)[None, :] < count[:, None]
    sel_boxes = tf.where(valid[:, :, None], _gather_rows(boxes, sel_idx), 0.0)
    return sel_idx, sel_scores, count, sel_boxes


# XLA's CPU backend compiles a while loop into one kernel when one pass of its body touches
# fewer bytes than this option says (1 kB by default) and the body has no scatter; above it,
# every kernel of the body is dispatched on its own at every step.
LOOP_HOISTING_OPTION = "xla_cpu_small_while_loop_byte_threshold"
# Enough for the class-wise selection loop of 8 images x 5 classes x 256 live boxes (or 32 x 5 x
# 128, 128 x 5 x 32); small enough that no hoisted loop holds a reduction large enough for XLA to
# hand to its YNN library, which the single-kernel emitter cannot compile (16 MiB fails on a
# batch of 256: "Fusion kind not implemented on CPU").
LOOP_HOISTING_BYTES = 1 << 20


def hoist_small_xla_cpu_loops(max_bytes=LOOP_HOISTING_BYTES):
    """Lets XLA's CPU backend compile each small while loop into one kernel (process-wide).

    The class-wise selection loop (`multiclass_non_max_suppression`) takes ~26 small kernels
    per step; XLA's default 1 kB limit dispatches each of them on its own at every step, which
    costs more than their work. This adds `--xla_backend_extra_options=
    xla_cpu_small_while_loop_byte_threshold=max_bytes` to `XLA_FLAGS`. XLA reads `XLA_FLAGS`
    once, at the process's first XLA compilation, so call this before anything is compiled
    with XLA (importing TensorFlow is fine). A limit already in `XLA_FLAGS` is kept.

    Args:
        max_bytes: int > 0, the most bytes one pass of a loop's body may touch to be hoisted.

    Returns:
        The `XLA_FLAGS` value now in the environment.

    Raises:
        ValueError: If `max_bytes` is not a positive integer.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}.")
    setting = f"{LOOP_HOISTING_OPTION}={max_bytes}"
    flags = os.environ.get("XLA_FLAGS", "").split()
    extra = "--xla_backend_extra_options="
    at = [i for i, flag in enumerate(flags) if flag.startswith(extra)]
    if not at:
        flags.append(extra + setting)
    elif LOOP_HOISTING_OPTION + "=" not in flags[at[-1]]:
        # Extend the user's comma-separated list rather than add a second such flag.
        flags[at[-1]] += ("," if flags[at[-1]] != extra else "") + setting
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


_COMPILED = {}
# The first sorting stage takes the top FIRST_STAGE_FACTOR * max_output_size scores.
FIRST_STAGE_FACTOR = 2
# multiclass_non_max_suppression splits a batch this large (static) into two parallel halves,
# and a loop over this many images (static) lets its last quarter finish in a loop of its own.
PARALLEL_MIN_BATCH = 64
STRAGGLERS_MIN_BATCH = 64
# A selection buffer up to this size is compared with each block in one piece, without a loop.
SINGLE_TILE_MAX = 256


def _compiled(fn, jit_compile):
    """`fn` as a tf.function (XLA-compiled if asked), one per (fn, jit_compile)."""
    key = (fn.__name__, bool(jit_compile))
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(fn, jit_compile=bool(jit_compile), reduce_retracing=False)
    return _COMPILED[key]


def _bucket(n, block):
    """Padded length for n items: the next power of two, rounded up to a multiple of block."""
    return max(block, _round_up(1 << max(n - 1, 0).bit_length(), block))


def _empty_outputs(batch, dtype):
    return (
        tf.zeros([batch, 0], tf.int32),
        tf.zeros([batch, 0], dtype),
        tf.zeros([batch], tf.int32),
        tf.zeros([batch, 0, 4], dtype),
    )


def _check_sizes(candidates, max_output_size):
    num_boxes = candidates.shape[1]
    if num_boxes is None:
        raise ValueError("non_max_suppression needs a static number of boxes (boxes.shape[-2]).")
    return (num_boxes, *_output_limits(num_boxes, max_output_size))


def _output_limits(num_candidates, max_output_size):
    """(static output width, dynamic max_out), both capped at the static `num_candidates`."""
    static_max_out = _static_int(max_output_size)
    if static_max_out is not None and static_max_out < 0:
        raise ValueError(f"max_output_size must be >= 0, got {static_max_out}.")
    cap = num_candidates if static_max_out is None else min(static_max_out, num_candidates)
    max_out = tf.minimum(tf.cast(max_output_size, tf.int32), num_candidates)
    return cap, max_out


def _check_iou_threshold(iou_threshold):
    static_iou = _static_float(iou_threshold)
    if static_iou is not None and not 0.0 <= static_iou <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {static_iou}.")


def _batched_hard_nms(
    boxes, scores, classes, max_output_size, iou_threshold, score_threshold, block_size,
    jit_compile,
):
    num_boxes, cap, max_out = _check_sizes(scores, max_output_size)
    batch = tf.shape(scores)[0]
    if cap == 0:
        return _empty_outputs(batch, boxes.dtype)
    if block_size is None:
        # Small blocks waste less work when few boxes are wanted; big ones amortise the loop
        # when thousands are (measured on CPU: 1/4 of max_output_size, within [32, 512]).
        block_size = min(512, max(32, _bucket(cap, 1) // 4))
    block = min(block_size, _bucket(num_boxes, 8))
    cap_padded = min(_bucket(cap, block), _bucket(num_boxes, block))
    run_stage = _compiled(_hard_nms_stage, jit_compile)
    settings = (max_out, iou_threshold, score_threshold, block, cap_padded, cap)
    # Sorting everything costs O(N log N); the first selections usually come from the top few
    # hundred scores, so sort only a prefix first. top_k is stable (ties: lower index first), so
    # the prefix's order is the full sort's order and the second stage resumes where the first
    # stopped. The sort stays outside XLA, whose CPU sort is several times slower.
    first_k = min(num_boxes, max(block, _round_up(FIRST_STAGE_FACTOR * cap, block)))
    top_scores, top_idx = tf.math.top_k(scores, k=first_k, sorted=True)
    outputs, needs_more, state = run_stage(
        None, boxes, classes, top_scores, top_idx, *settings, _bucket(first_k, block)
    )
    if first_k < num_boxes:

        def resume():
            all_scores, all_idx = tf.math.top_k(scores, k=num_boxes, sorted=True)
            padded = _bucket(num_boxes, block)
            return run_stage(state, boxes, classes, all_scores, all_idx, *settings, padded)[0]

        outputs = tf.cond(needs_more, resume, lambda: outputs)
    return outputs


def _hard_nms_stage(
    state, boxes, classes, top_scores, top_idx, max_out, iou_threshold, score_threshold, block,
    cap_padded, cap, padded,
):
    """One sorting stage of hard NMS (one XLA program): returns (outputs, needs_more, state)."""
    if state is None:
        batch = tf.shape(top_scores)[0]
        state = (
            tf.constant(0),
            tf.zeros([batch], tf.int32),
            tf.zeros([batch, cap_padded + 1, 4], boxes.dtype),
            tf.zeros([batch, cap_padded + 1], top_scores.dtype),
            tf.zeros([batch, cap_padded + 1], tf.int32),
        )
        if classes is not None:
            state += (tf.zeros([batch, cap_padded + 1], tf.int32),)
    state = _hard_nms_blocks(
        state, boxes, classes, top_scores, top_idx, max_out, iou_threshold, score_threshold,
        block, padded,
    )
    _, count, sel_boxes, sel_scores, sel_idx = state[:5]
    # More candidates may be needed if an image has room and its last sorted score still passes.
    needs_more = tf.reduce_any(
        tf.logical_and(count < max_out, top_scores[:, -1] > score_threshold)
    )
    outputs = (sel_idx[:, :cap], sel_scores[:, :cap], count, sel_boxes[:, :cap])
    return outputs, needs_more, state


def _batched_soft_nms(
    boxes, scores, classes, max_output_size, score_threshold, sigma, jit_compile
):
    num_boxes, cap, max_out = _check_sizes(boxes, max_output_size)
    batch = tf.shape(scores)[0]
    if cap == 0:
        return _empty_outputs(batch, boxes.dtype)
    scale = tf.cast(-0.5, tf.float32) / tf.cast(sigma, tf.float32)
    padded = _bucket(num_boxes, 8)
    cap_padded = min(_bucket(cap, 8), padded)
    return _compiled(_soft_nms_loop, jit_compile)(
        boxes, scores, classes, max_out, score_threshold, scale, cap_padded, cap, padded
    )


def batched_non_max_suppression(
    boxes,
    scores,
    max_output_size,
    iou_threshold=0.5,
    score_threshold=-math.inf,
    soft_nms_sigma=0.0,
    block_size=None,
    jit_compile=True,
    classes=None,
):
    """Per-image NMS over a batch, padded to a fixed size; class-aware when given `classes`.

    Class-aware NMS (`classes` given) is per-class NMS done as one pass: boxes of different
    classes never suppress each other (pairs of different classes are masked out of the IoU
    test, so the IoUs themselves are computed on the original coordinates, bit for bit as in
    class-agnostic NMS). Greedy NMS decides a box from the higher-scored boxes of its own class
    only, so the selection is exactly the union of independent per-class NMS runs, in
    descending score order (equal scores: lower index first), truncated to `max_output_size`.
    With the candidates laid out class-major (index = class * N + box), that equals
    `tf.image.combined_non_max_suppression` with `max_output_size_per_class >= max_total_size`.
    This is torchvision's `batched_nms` without its coordinate offset trick, whose shifted
    coordinates change the IoUs in their last bits.

    Args:
        boxes: float32 `(batch, N, 4)`, `[y1, x1, y2, x2]` (corners in either order). N must be
            known when tracing.
        scores: float32 `(batch, N)`.
        max_output_size: int, the most boxes kept per image. A Python int (or a constant) keeps
            the output size at `min(max_output_size, N)`; a traced tensor makes it N.
        iou_threshold: float in [0, 1], boxes with IoU strictly greater than this against a
            selected box are suppressed (hard NMS only).
        score_threshold: float, only boxes with score strictly greater than this are selected.
        soft_nms_sigma: Python float, Gaussian soft-NMS parameter; 0 means hard NMS.
        block_size: int, candidates per tile in hard NMS (a speed knob, not a semantic one);
            None picks one from `max_output_size`.
        jit_compile: bool, compile the selection loop with XLA (much faster on CPU; one
            compilation per input shape). The sort always runs outside XLA.
        classes: optional int `(batch, N)` class ids; boxes suppress (or, in soft-NMS, decay)
            only boxes of the same class. None: class-agnostic NMS.

    Returns:
        A tuple `(indices, scores, valid_counts, boxes)`: int32 `(batch, K)` indices into N,
        float `(batch, K)` selected scores (decayed ones for soft-NMS), int32 `(batch,)` the
        number of valid entries per image and float `(batch, K, 4)` the selected boxes, where
        K = min(max_output_size, N). Entries past `valid_counts` are zero.

    Raises:
        ValueError: On a negative `max_output_size` or `soft_nms_sigma`, an `iou_threshold`
            outside [0, 1], an unknown N, or `classes` not shaped like `scores`.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    if classes is not None:
        classes = tf.cast(classes, tf.int32)
        if not classes.shape.is_compatible_with(scores.shape):
            raise ValueError(
                f"classes must have the shape of scores {scores.shape}, got {classes.shape}."
            )
    _check_iou_threshold(iou_threshold)
    iou_threshold = tf.cast(iou_threshold, tf.float32)
    score_threshold = tf.cast(score_threshold, tf.float32)
    sigma = float(soft_nms_sigma)
    if sigma < 0.0:
        raise ValueError(f"soft_nms_sigma must be >= 0, got {sigma}.")
    if sigma > 0.0:
        return _batched_soft_nms(
            boxes, scores, classes, max_output_size, score_threshold, sigma, jit_compile
        )
    return _batched_hard_nms(
        boxes, scores, classes, max_output_size, iou_threshold, score_threshold, block_size,
        jit_compile,
    )


def _live_cells(boxes, scores, score_threshold, width):
    """Compacts each image's boxes to those with some class score > threshold (in index order).

    Returns (src (b, width) int32 original box index, boxes (b, width, 4), scores (b, width, C)
    with -inf in the unused slots). A box none of whose classes passes the threshold can be
    neither selected nor (since only selected boxes suppress) suppress another, so dropping
    it changes no selection; keeping the order keeps the tie-break by box index.
    """
    batch, num_boxes = tf.shape(scores)[0], tf.shape(scores)[1]
    live = tf.reduce_any(scores > score_threshold, axis=2)
    # Slot of each live box = its rank among the live boxes; dead boxes go to a trash slot.
    slot = tf.where(live, tf.cumsum(tf.cast(live, tf.int32), axis=1) - 1, width)
    slot += (width + 1) * tf.range(batch)[:, None]
    positions = tf.broadcast_to(tf.range(num_boxes)[None], tf.shape(live))
    src = tf.math.unsorted_segment_max(positions, slot, batch * (width + 1))
    src = tf.reshape(src, [batch, width + 1])[:, :width]
    filled = tf.range(width)[None] < tf.reduce_sum(tf.cast(live, tf.int32), axis=1)[:, None]
    src = tf.where(filled, src, 0)
    scores = tf.where(filled[..., None], _gather_rows(scores, src), -math.inf)
    return src, _gather_rows(boxes, src), scores


def _best_in_rows(values):
    """Max over the last axis and the lowest index where it occurs."""
    size = tf.shape(values)[-1]
    best = tf.reduce_max(values, axis=-1)
    at = tf.reduce_min(tf.where(values == best[..., None], tf.range(size), size), axis=-1)
    return best, tf.minimum(at, size - 1)


def _compaction_widths(num_boxes):
    """The static widths live boxes are compacted to: powers of two from 16 below N, and N."""
    return sorted({num_boxes} | {16 << i for i in range(32) if (16 << i) < num_boxes})


def _multiclass_select(boxes, scores, max_out, iou_threshold, score_threshold, cap):
    """Class-wise greedy NMS in global score order (one XLA program): see
    `multiclass_non_max_suppression`. The live boxes are compacted to the smallest of
    `_compaction_widths` that holds every image's: the choice is made inside the program, one
    branch (and selection loop) per width, so that every shape stays static and no op runs
    outside it.
    """
    widths = _compaction_widths(scores.shape[1])
    return tf.switch_case(_width_index(scores, score_threshold, widths), [
        functools.partial(_multiclass_greedy, boxes, scores, width, max_out, iou_threshold,
                          score_threshold, cap) for width in widths])


def _width_index(scores, score_threshold, widths):
    """Index of the smallest of `widths` (ascending, the last one N) that holds every image's
    live boxes (those with some class score > `score_threshold`)."""
    live = tf.reduce_sum(tf.cast(tf.reduce_any(scores > score_threshold, axis=2), tf.int32), 1)
    return tf.reduce_sum(tf.cast(tf.constant(widths[:-1], tf.int32) < tf.reduce_max(live),
                                 tf.int32))


def _multiclass_greedy(boxes, scores, width, max_out, iou_threshold, score_threshold, cap):
    """`_multiclass_select`'s loop on the live boxes compacted to `width` (a Python int)."""
    batch = tf.shape(scores)[0]
    if width < scores.shape[1]:
        src, boxes, scores = _live_cells(boxes, scores, score_threshold, width)
    else:  # every box: the compaction would be the identity
        src = tf.broadcast_to(tf.range(width)[None], tf.shape(scores)[:2])
    # Per box, the extents and area of `layers.boxes.pairwise_iou`, computed once: the IoU
    # below repeats its float32 operations one for one (bit-identical to TF's kernel).
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    ymin, xmin = tf.minimum(y1, y2), tf.minimum(x1, x2)
    ymax, xmax = tf.maximum(y1, y2), tf.maximum(x1, x2)
    area = (ymax - ymin) * (xmax - xmin)
    # current[b, c, i]: score of box i in class c while it is a live candidate, else -inf.
    current = tf.transpose(scores, [0, 2, 1])
    current = tf.where(current > score_threshold, current, -math.inf)
    row_best, row_at = _best_in_rows(current)  # (b, C): each class's next candidate
    geometry = (ymin, xmin, ymax, xmax, area)
    buffer = lambda dtype: tf.zeros([batch, cap], dtype)  # noqa: E731
    state = (current, row_best, row_at, buffer(tf.int32), buffer(tf.int32),
             buffer(scores.dtype), tf.zeros([batch], tf.int32))
    # Every image with a candidate left takes one per step, so the batch steps as long as its
    # longest image (52 steps for 256 images that average 19 selections). In a large batch,
    # once no more than a quarter of the images are left, those go on alone (~0.65x the
    # image-steps); a small batch's steps cost mostly the loop's own overhead.
    static_batch = scores.shape[0]
    stragglers = static_batch // 4 if (static_batch or 0) >= STRAGGLERS_MIN_BATCH else 0
    loop = functools.partial(_greedy_steps, max_out=max_out, iou_threshold=iou_threshold,
                             cap=cap)
    step, state = loop(tf.constant(0), state, geometry, stop_at=stragglers)
    *_, sel_idx, sel_cls, sel_scores, count = state
    if stragglers:
        rows = _first_rows(tf.reduce_any(state[1] > -math.inf, axis=1), stragglers)
        _, sub = loop(step, [tf.gather(t, rows) for t in state],
                      [tf.gather(t, rows) for t in geometry], stop_at=0)
        sel_idx, sel_cls, sel_scores, count = (
            tf.tensor_scatter_nd_update(t, rows[:, None], u) for t, u in zip(state[3:], sub[3:]))
    valid = tf.range(cap)[None] < count[:, None]
    sel_boxes = tf.where(valid[..., None], _gather_rows(boxes, sel_idx), 0.0)
    box_idx = tf.where(valid, _gather_rows(src, sel_idx), 0)
    return box_idx, sel_cls, sel_scores, count, sel_boxes


def _first_rows(flags, k):
    """Indices of the first k rows of a stable partition, rows with `flags` first (distinct;
    no sort, which XLA's CPU backend runs slowly)."""
    flags = tf.cast(flags, tf.int32)
    ahead = tf.cumsum(flags) - flags  # flagged rows before each row
    behind = tf.cumsum(1 - flags) - (1 - flags)
    position = tf.where(flags > 0, ahead, tf.reduce_sum(flags) + behind)
    rows = tf.range(tf.shape(flags)[0])
    return tf.tensor_scatter_nd_update(rows, position[:, None], rows)[:k]


def _greedy_steps(step, state, geometry, *, max_out, iou_threshold, cap, stop_at):
    """`_multiclass_greedy`'s selection steps, while `step < max_out` and more than `stop_at`
    images have a candidate left. Returns (step, state)."""
    current, *_ = state
    num_classes, width = current.shape[1], current.shape[2]
    ymin, xmin, ymax, xmax, area = geometry
    images, class_ids = tf.range(tf.shape(current)[0]), tf.range(num_classes)
    lanes, slots = tf.range(width), tf.range(cap)

    def cond(step, current, row_best, *_):
        left = tf.reduce_sum(tf.cast(tf.reduce_any(row_best > -math.inf, axis=1), tf.int32))
        return tf.logical_and(step < max_out, left > stop_at)

    def body(step, current, row_best, row_at, sel_idx, sel_cls, sel_scores, count):
        # The image's best candidate over all classes (ties: lower class, then lower box).
        best = tf.reduce_max(row_best, axis=1)
        cls = tf.reduce_min(tf.where(row_best == best[:, None], class_ids, num_classes), axis=1)
        cls = tf.minimum(cls, num_classes - 1)
        took = best > -math.inf
        row = tf.stack([images, cls], axis=-1)
        in_class = class_ids[None, :] == cls[:, None]  # (b, C): the picked candidate's class
        pick = tf.gather_nd(row_at, row)
        # Every write below is a select, not a scatter: XLA's CPU backend compiles a small
        # loop whose body has no scatter into one kernel (see `hoist_small_xla_cpu_loops`).
        # An image with a candidate has taken one at every step so far: its slot is `step`.
        slot = tf.logical_and(slots[None] == step, took[:, None])
        sel_idx = tf.where(slot, pick[:, None], sel_idx)
        sel_cls = tf.where(slot, cls[:, None], sel_cls)
        sel_scores = tf.where(slot, best[:, None], sel_scores)
        count += tf.cast(took, tf.int32)
        # It suppresses the boxes of its own class with IoU > threshold (and leaves the list).
        a = [tf.gather(t, pick, batch_dims=1)[:, None] for t in (ymin, xmin, ymax, xmax, area)]
        inter_h = tf.maximum(tf.minimum(a[2], ymax) - tf.maximum(a[0], ymin), 0.0)
        inter_w = tf.maximum(tf.minimum(a[3], xmax) - tf.maximum(a[1], xmin), 0.0)
        inter = inter_h * inter_w
        union = (a[4] + area) - inter
        valid = tf.logical_and(a[4] > 0.0, area > 0.0)
        iou = tf.where(valid, inter / tf.where(valid, union, 1.0), 0.0)
        gone = tf.logical_or(iou > iou_threshold, lanes[None] == pick[:, None])
        scores_c = tf.where(gone, -math.inf, tf.gather_nd(current, row))
        current = tf.where(in_class[:, :, None], scores_c[:, None, :], current)
        new_best, new_at = _best_in_rows(scores_c)
        row_best = tf.where(in_class, new_best[:, None], row_best)
        row_at = tf.where(in_class, new_at[:, None], row_at)
        return step + 1, current, row_best, row_at, sel_idx, sel_cls, sel_scores, count

    step, *state = tf.while_loop(cond, body, (step, *state))
    return step, state


def _in_xla_context():
    try:
        from tensorflow.python.ops import control_flow_util

        return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except (ImportError, AttributeError):  # pragma: no cover - private TF API moved
        return True


def multiclass_non_max_suppression(
    boxes,
    scores,
    max_output_size,
    iou_threshold=0.5,
    score_threshold=-math.inf,
    soft_nms_sigma=0.0,
    block_size=None,
    jit_compile=True,
):
    """Class-wise NMS of multi-class scores, like `tf.image.combined_non_max_suppression`.

    Every (class, box) pair with score > `score_threshold` is a candidate; NMS runs within each
    class (independent per-class NMS), and the per-class selections are merged by descending
    score (equal scores: lower class, then lower box index) and truncated to
    `max_output_size` per image. That is `tf.image.combined_non_max_suppression(boxes[:, :,
    None], scores, K, K, ...)` with `clip_boxes=False` (K = `max_output_size`). Hard NMS: the
    boxes with no class score over the threshold are compacted away, then each step takes each
    image's best remaining (class, box) candidate and suppresses its class's overlapping boxes
    (no sort; see the module docstring). Soft-NMS: one class-aware pass per image (see
    `batched_non_max_suppression(classes=...)`) over the candidates laid out class-major.

    Args:
        boxes: float32 `(batch, N, 4)`, `[y1, x1, y2, x2]`, shared by all classes.
        scores: float32 `(batch, N, C)`, one score per box and class. N and C must be static.
        max_output_size: int, the most detections kept per image (over all classes).
        iou_threshold: float in [0, 1], same-class IoU strictly above which a box is
            suppressed (hard NMS).
        score_threshold: float, only candidates with score strictly greater are selected.
        soft_nms_sigma: Python float, Gaussian soft-NMS within each class when > 0.
        block_size: int or None, hard-NMS tile size (speed only).
        jit_compile: bool, run the selection loop under XLA (speed only).

    Returns:
        A tuple `(box_indices, classes, scores, valid_counts, boxes)`: int32 `(batch, K)`
        indices into N, int32 `(batch, K)` class ids, float `(batch, K)` scores (decayed for
        soft-NMS), int32 `(batch,)` valid entries per image and float `(batch, K, 4)` boxes,
        K = min(max_output_size, N * C), in selection order; zero past `valid_counts`.

    Raises:
        ValueError: As `batched_non_max_suppression`, or if N or C is unknown.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    num_boxes, num_classes = scores.shape[1], scores.shape[2]
    if num_boxes is None or num_classes is None:
        raise ValueError(
            f"multiclass_non_max_suppression needs static N and C, got {scores.shape}.")
    batch = tf.shape(scores)[0]
    if float(soft_nms_sigma) > 0.0:
        # Class-major candidates: index c * N + i (ties: lower class, then lower box).
        flat_scores = tf.reshape(
            tf.transpose(scores, [0, 2, 1]), [batch, num_classes * num_boxes]
        )
        flat_boxes = tf.reshape(
            tf.tile(boxes[:, None], [1, num_classes, 1, 1]), [batch, num_classes * num_boxes, 4]
        )
        classes = tf.tile(tf.repeat(tf.range(num_classes), num_boxes)[None], [batch, 1])
        idx, sel, count, sel_boxes = batched_non_max_suppression(
            flat_boxes, flat_scores, max_output_size, iou_threshold, score_threshold,
            soft_nms_sigma, block_size, jit_compile, classes=classes,
        )
        valid = tf.range(tf.shape(idx)[1])[None, :] < count[:, None]
        box_idx = tf.where(valid, idx % num_boxes, 0)
        classes = tf.where(valid, idx // num_boxes, 0)
        return box_idx, classes, sel, count, sel_boxes
    _check_iou_threshold(iou_threshold)
    cap, max_out = _output_limits(num_boxes * num_classes, max_output_size)
    if cap == 0:
        zeros = tf.zeros([batch, 0], tf.int32)
        return zeros, zeros, tf.zeros([batch, 0]), tf.zeros([batch], tf.int32), tf.zeros(
            [batch, 0, 4])
    score_threshold = tf.cast(score_threshold, tf.float32)
    iou_threshold = tf.cast(iou_threshold, tf.float32)
    run = _compiled(_multiclass_select, jit_compile)
    static_batch = scores.shape[0]
    # A caller's XLA program runs single-threaded: no halves there.
    if static_batch is None or static_batch < PARALLEL_MIN_BATCH or (
            jit_compile and _in_xla_context()):
        return run(boxes, scores, max_out, iou_threshold, score_threshold, cap)
    # Large batches: two independent halves, which TensorFlow runs on two threads (each
    # selection loop is one single-threaded XLA program; TF's C++ kernel shards too).
    half = static_batch // 2
    parts = (run(boxes[:half], scores[:half], max_out, iou_threshold, score_threshold, cap),
             run(boxes[half:], scores[half:], max_out, iou_threshold, score_threshold, cap))
    return tuple(tf.concat(pair, axis=0) for pair in zip(*parts))


def _static_float(x):
    if isinstance(x, (int, float)):
        return float(x)
    value = tf.get_static_value(x)
    return None if value is None else float(value)


def non_max_suppression(
    boxes,
    scores,
    max_output_size,
    iou_threshold=0.5,
    score_threshold=-math.inf,
    soft_nms_sigma=0.0,
    pad_to_max_output_size=False,
    jit_compile=True,
    classes=None,
):
    """Greedy (or Gaussian soft) NMS of one image's boxes, like `tf.image.non_max_suppression`.

    Args:
        boxes: float32 `(N, 4)`, `[y1, x1, y2, x2]`, corners in either order.
        scores: float32 `(N,)`.
        max_output_size: int, the most boxes to select.
        iou_threshold: float, suppress boxes whose IoU with a selected box is strictly greater.
        score_threshold: float, select only boxes with score strictly greater.
        soft_nms_sigma: float, Gaussian soft-NMS when > 0 (see the module docstring).
        pad_to_max_output_size: bool, pad the outputs with zeros to `min(max_output_size, N)`
            (needed inside a caller's `jit_compile=True` function, where shapes are static).
        jit_compile: bool, run the selection loop under XLA (see `batched_non_max_suppression`).
        classes: optional int `(N,)` class ids: class-aware NMS (per-class NMS in one pass, see
            `batched_non_max_suppression`). None: class-agnostic.

    Returns:
        A tuple `(selected_indices, selected_scores, num_valid)`: int32 indices into `boxes` in
        selection order, their scores (decayed ones for soft-NMS) and the int32 count of valid
        entries. Unpadded, the first two have shape `(num_valid,)`.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    indices, selected_scores, count, _ = batched_non_max_suppression(
        boxes[None], scores[None], max_output_size, iou_threshold, score_threshold,
        soft_nms_sigma, jit_compile=jit_compile,
        classes=None if classes is None else tf.convert_to_tensor(classes)[None],
    )
    indices, selected_scores, count = indices[0], selected_scores[0], count[0]
    if not pad_to_max_output_size:
        indices, selected_scores = indices[:count], selected_scores[:count]
    return indices, selected_scores, count


@register
class NonMaxSuppression(keras.layers.Layer):
    """Batched greedy NMS or Gaussian soft-NMS, padded to `max_output_size` (no weights).

    Call it on `[boxes, scores]` with boxes `(batch, N, 4)` in `[y1, x1, y2, x2]` and scores
    `(batch, N)`. Each image is suppressed on its own, with exactly the result of
    `tf.image.non_max_suppression` (or `tf.image.non_max_suppression_with_scores` for soft-NMS).
    With `class_aware=True`, call it on `[boxes, scores, classes]` (int classes `(batch, N)`):
    only boxes of the same class suppress each other, i.e. per-class NMS in one pass, the
    selections of all classes merged by descending score (see `batched_non_max_suppression`).

    Args:
        max_output_size: int, the most boxes kept per image.
        iou_threshold: float, IoU strictly above which a box is suppressed (hard NMS).
        score_threshold: float, boxes with score <= this are never selected.
        soft_nms_sigma: float, Gaussian soft-NMS parameter; 0.0 selects hard NMS.
        block_size: int or None, tile size of the hard-NMS computation (speed only; None picks
            one from `max_output_size`).
        jit_compile: bool, run the selection loop under XLA (speed only).
        class_aware: bool, the inputs carry class ids and suppression stays within a class.
        **kwargs: Base layer keyword arguments (`name`, ...).

    Returns (from `call`):
        A tuple `(indices, scores, valid_counts, boxes)`: int32 `(batch, K)`, float
        `(batch, K)`, int32 `(batch,)` and float `(batch, K, 4)`, K = min(max_output_size, N);
        entries past `valid_counts` are zero.
    """

    def __init__(
        self,
        max_output_size,
        iou_threshold=0.5,
        score_threshold=-math.inf,
        soft_nms_sigma=0.0,
        block_size=None,
        jit_compile=True,
        class_aware=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(max_output_size) < 0:
            raise ValueError(f"max_output_size must be >= 0, got {max_output_size}.")
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
        if float(soft_nms_sigma) < 0.0:
            raise ValueError(f"soft_nms_sigma must be >= 0, got {soft_nms_sigma}.")
        if block_size is not None and int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}.")
        self.max_output_size = int(max_output_size)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.block_size = None if block_size is None else int(block_size)
        self.jit_compile = bool(jit_compile)
        self.class_aware = bool(class_aware)
        self.supports_masking = False

    def _split(self, inputs):
        inputs = tuple(inputs)
        expected = 3 if self.class_aware else 2
        if len(inputs) != expected:
            names = "[boxes, scores, classes]" if self.class_aware else "[boxes, scores]"
            raise ValueError(
                f"NonMaxSuppression(class_aware={self.class_aware}) expects {names}, "
                f"got {len(inputs)} inputs."
            )
        return inputs if self.class_aware else inputs + (None,)

    def call(self, inputs):
        boxes, scores, classes = self._split(inputs)
        return batched_non_max_suppression(
            boxes,
            scores,
            self.max_output_size,
            self.iou_threshold,
            self.score_threshold,
            self.soft_nms_sigma,
            self.block_size,
            self.jit_compile,
            classes=classes,
        )

    def compute_output_shape(self, input_shape):
        boxes_shape = input_shape[0]
        batch, num_boxes = boxes_shape[0], boxes_shape[1]
        k = self.max_output_size if num_boxes is None else min(self.max_output_size, num_boxes)
        return (batch, k), (batch, k), (batch,), (batch, k, 4)

    def compute_output_spec(self, inputs):
        boxes = self._split(inputs)[0]
        shapes = self.compute_output_shape((boxes.shape, None))
        dtypes = ("int32", "float32", "int32", "float32")
        return tuple(keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes))

    def get_config(self):
        config = super().get_config()
        config.update(
            max_output_size=self.max_output_size,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            soft_nms_sigma=self.soft_nms_sigma,
            block_size=self.block_size,
            jit_compile=self.jit_compile,
            class_aware=self.class_aware,
        )
        return config
