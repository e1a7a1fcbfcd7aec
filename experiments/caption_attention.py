"""Image captioning with soft attention, Show-Attend-Tell style, on shape scenes.

A small CNN (the suite's ResidualBlocks, from scratch) turns a scene, resized from 64 to 48 px
(--caption_scene_size; 0 keeps 64 px), into 6 x 6 = 36 region features (8 x 8 at 64 px); an
LSTM decoder (layers.recurrent.LSTMCell) attends over them with
AdditiveAttention (Bahdanau; --attention=dot for DotProductAttention) and is trained with
teacher forcing on the per-token cross-entropy over the real tokens of the global batch plus
Xu et al.'s doubly stochastic penalty lambda * sum_i (1 - sum_t alpha_ti)^2 (--attention_reg,
each value a configuration). The baseline is the same decoder seeing only the mean-pooled
features. Model selection (best epoch, early stopping, which attention configuration) uses
validation BLEU-4 only; test and compositional_test are reported. See experiments/captioning.py
for the model, loss, decoding and metrics.

Claims (Xu et al. 2015; Liu et al. 2017), rules fixed before any number was seen:
  attention beats the no-attention baseline on compositional_test BLEU-4 (greedy decoding,
  mean over seeds minus 2 standard errors > 0); attention mass inside the named object's box is
  > 2x its area share (test, greedy); the doubly stochastic penalty spreads attention (effective
  regions exp(H) with the largest lambda > with lambda 0); beam search BLEU-4 >= greedy (test).

Command:   python -m experiments.caption_attention [--quick] [--attention=dot]
           [--attention_reg=0,1] [--beam_size=3] [--dataset=coco_captions --data_dir=...]
           python -m experiments.caption_attention --predict=image.png --model_dir=RUN
Runtime:   --quick ("quick" scenes 1500 / 300 / 300 / 300 at 48 px, 1 seed, 3 trainings x 2
           epochs, two of the five references per image per epoch, LSTM 64, attention 32,
           all 300 test / compositional images): 104 CPU-s including the dataset build (CPU-bound:
           on 2 idle cores the wall time is at most about that), 168 s wall on the shared 2
           cores at load 7. One seed cannot decide "beyond seed noise", and quick verdicts
           move with the preset (a 3-epoch variant reversed the baseline gap; README).
           Full (8000 scenes at 48 px, 3 seeds x 3 configurations, 4 epochs, LSTM 128,
           attention 64): 1,905 CPU-s, 40 min wall at load 5-7 (4 claims confirmed; BLEU-4
           test 38.4 attention vs 34.5 baseline, compositional 18.7 vs 17.8). The earlier
           full preset (64 px, LSTM 192, attention 128, all 5 references, 15 epochs) measured
           815 CPU-ms per step: ~28,000 CPU-s, 5-8 hours on 2 cores, so it was cut down.
Determinism: with the same flags and seed a run is bit-identical on CPU (BLEU, claims,
           weights; tests/experiments/test_caption_attention.py), given --deterministic (on by
           default). The README's two differing quick runs came from different code (commit
           048011c changed the Loop's loss ops, so float rounding), not from run-to-run noise.
Yardstick: for --dataset=coco_captions only, Xu et al.'s soft attention BLEU-1/4 = 67/19.5
           (Flickr8k), 70.7/24.3 (COCO); not a target on shapes.
"""

import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from experiments import captioning as cap
from experiments import runtime
from experiments.runtime.errors import ConfigError

DATASETS = ["shape_scenes", "coco_captions"]
MODEL_FILE = "captioner.keras"
EVAL_SPLITS = ("test", "compositional_test")

flags.DEFINE_enum("attention", "additive", ["additive", "dot"],
                  "Attention of the captioner: additive (Bahdanau) or dot (Luong).")
flags.DEFINE_list("attention_reg", ["0", "1"],
                  "Doubly stochastic penalty weights lambda; each is a configuration.")
flags.DEFINE_integer("beam_size", 3, "Beam width of beam-search decoding.", lower_bound=1)
flags.DEFINE_integer("caption_seeds", 3, "Seeds per configuration.", lower_bound=1)
flags.DEFINE_enum("caption_data", "default", ["default", "quick", "tiny", "image96"],
                  "shape_scenes config (--dataset=shape_scenes).")
flags.DEFINE_integer("caption_units", 128, "LSTM units.", lower_bound=8)
flags.DEFINE_integer("caption_embedding", 64, "Word embedding size.", lower_bound=4)
flags.DEFINE_integer("caption_attention_units", 64, "Additive attention hidden size.",
                     lower_bound=4)
flags.DEFINE_list("caption_channels", ["32", "48", "64"], "Encoder channels (stem, block1, block2).")
flags.DEFINE_float("caption_dropout", 0.2, "Dropout before the output layer.")
flags.DEFINE_integer("caption_patience", 3, "Early stopping: epochs without a better "
                     "validation BLEU-4.", lower_bound=1)
flags.DEFINE_integer("caption_eval_images", 1000, "At most this many images per evaluated "
                     "split (validation per epoch: at most 300).", lower_bound=1)
flags.DEFINE_enum("caption_encoder", "cnn", ["cnn", "mobilenet_v2"],
                  "Region encoder: the from-scratch CNN, or a keras.applications backbone.")
flags.DEFINE_string("caption_backbone_weights", None, "mobilenet_v2 weights ('imagenet' or a "
                    "file); None trains it from scratch.")
flags.DEFINE_integer("caption_image_size", 128, "Resize side for real photos.", lower_bound=32)
flags.DEFINE_integer("caption_scene_size", 48, "Resize side for shape scenes: 48 gives 6 x 6 "
                     "regions; 0 keeps the config's own (64 px: 8 x 8; image96: 12 x 12).",
                     lower_bound=0)
flags.DEFINE_integer("caption_train_captions", 2, "References per training image in each "
                     "epoch (a random subset, fixed by seed and epoch; 5: all).",
                     lower_bound=1)
flags.DEFINE_integer("caption_max_images", 20000, "Cap on real training images.", lower_bound=1)


@flags.validator("attention_reg", message="--attention_reg must be numbers >= 0")
def _check_regs(values):
    try:
        return bool(values) and all(float(v) >= 0 for v in values)
    except ValueError:
        return False


# ----------------------------------------------------------------------------- data
def load_splits(config):
    """Per split: {"images" uint8 (n, S, S, 3), "captions" (n, 5) str, "objects" [[{bbox,
    shape, colour}]]}, and the names of shapes and colours (empty for real data)."""
    if config.dataset == "shape_scenes":
        from experiments.data import shape_scenes as scenes

        def load(split):
            return scenes.load(split, config=config.caption_data, data_dir=config.data_dir)

        names = (scenes.SHAPES, scenes.COLOURS)
        size = config.caption_scene_size or None
    else:
        from experiments.data import real_scenes

        def load(split):
            return real_scenes.load_real(config.dataset, split, data_dir=config.data_dir)

        names, size = ((), ()), config.caption_image_size
    splits = {}
    for split in ("train", "validation", *EVAL_SPLITS):
        if config.dataset != "shape_scenes" and split == "compositional_test":
            continue
        limit = config.caption_max_images if split == "train" else config.caption_eval_images
        dataset = load(split).take(limit)
        if size:
            dataset = dataset.map(lambda e: {**e, "image": tf.cast(tf.round(tf.image.resize(
                e["image"], (size, size), antialias=True)), tf.uint8)})
        examples = list(dataset.as_numpy_iterator())
        objects = [[{"bbox": box, "shape": names[0][label] if names[0] else str(label),
                     "colour": names[1][colour] if names[1] else None}
                    for box, label, colour in zip(
                        e["objects"]["bbox"], e["objects"]["label"],
                        e["objects"].get("colour", [0] * len(e["objects"]["label"])))]
                   for e in examples]
        splits[split] = {
            "images": np.stack([e["image"] for e in examples]),
            "captions": np.array([[c.decode() for c in e["captions"]] for e in examples],
                                 dtype=object),
            "objects": objects,
        }
    return splits, names


def build_vocabulary(captions, min_count=1):
    counts = {}
    for caption in captions.reshape(-1):
        for word in cap.tokenize(caption):
            counts[word] = counts.get(word, 0) + 1
    return list(cap.SPECIALS) + sorted(w for w, n in counts.items() if n >= min_count)


# ----------------------------------------------------------------------------- pictures
def attention_picture(image, words, alphas, scale=2):
    """uint8 (H, W*(n+1), 3): the image, then per word the attention map over it, labelled."""
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    side = image.shape[0] * scale
    base = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST),
                      np.float32)
    panels = [base.astype(np.uint8)]
    grid = int(round(math.sqrt(alphas.shape[-1]))) if len(words) else 1
    for alpha in alphas:
        heat = np.asarray(alpha, np.float32).reshape(grid, grid)
        heat = heat / max(float(heat.max()), 1e-9)
        heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(
            (side, side), Image.Resampling.BILINEAR), np.float32)[..., None] / 255.0
        panels.append((base * (0.25 + 0.75 * heat)).astype(np.uint8))
    strip = Image.fromarray(np.concatenate(panels, axis=1))
    canvas = Image.new("RGB", (strip.width, side + 14), (255, 255, 255))
    canvas.paste(strip, (0, 14))
    draw = ImageDraw.Draw(canvas)
    for i, word in enumerate(["image", *words]):
        draw.text((i * side + 2, 1), word, fill=(0, 0, 0))
    return np.asarray(canvas)


def _figure_of(pictures, titles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pictures), 1, figsize=(14, 1.6 * len(pictures) + 0.5),
                             squeeze=False)
    for ax, picture, title in zip(axes[:, 0], pictures, titles):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(model, data, vocabulary, names, beam_size, decodings=("greedy", "beam")):
    """BLEU per decoding, and (attention models, shape data) correctness and spread.

    Returns a flat dict: "<decoding>/bleu_n", "correct/<shape>/mass|share|count",
    "spread/effective_regions", "spread/penalty".
    """
    decoder = cap.decoder_for(model)
    refs = [[cap.tokenize(c) for c in row] for row in data["captions"]]
    out, outputs = {}, {}
    for decoding in decodings:
        if decoding == "greedy":
            ids, alphas = decoder.greedy(data["images"])
        else:
            ids, alphas = decoder.beam(data["images"], beam_size)
        words = [cap.decode_ids(i, vocabulary) for i in ids]
        outputs[decoding] = (words, alphas)
        out.update({f"{decoding}/{k}": v for k, v in cap.bleu(refs, words).items()})
    words, alphas = outputs[decodings[0]]
    if model.attention != "none" and names[0]:
        hits = {}
        for w, a, objects in zip(words, alphas, data["objects"]):
            for hit in cap.attention_correctness(w, a, objects, *names):
                hits.setdefault(hit["shape"], []).append((hit["mass"], hit["share"]))
        everything = [h for v in hits.values() for h in v]
        for shape, values in [*sorted(hits.items()), ("all", everything)]:
            values = np.asarray(values).reshape(-1, 2)
            out[f"correct/{shape}/count"] = len(values)
            out[f"correct/{shape}/mass"] = float(values[:, 0].mean()) if len(values) else None
            out[f"correct/{shape}/share"] = float(values[:, 1].mean()) if len(values) else None
    if model.attention != "none":
        spread = np.asarray([cap.attention_spread(a) for a in alphas if len(a)])
        out["spread/effective_regions"] = float(np.nanmean(spread[:, 0]))
        out["spread/penalty"] = float(np.nanmean(spread[:, 1]))
    return out, outputs


class CaptionMonitor(keras.callbacks.Callback):
    """Per epoch: validation BLEU (greedy), TensorBoard scalars, sample captions with their
    references (text) and attention maps per word (image) in `log_dir`; keeps the weights of
    the best validation BLEU-4, stops after `patience` epochs without a better one and
    restores the best weights at the end."""

    # Saved in the trainer's checkpoint: a resumed run keeps them (runtime.callback_state).
    state_attributes = ("curve", "best", "best_weights", "wait")

    def __init__(self, data, vocabulary, log_dir, patience, samples=2):
        super().__init__()
        self.data, self.vocabulary, self.patience, self.samples = data, vocabulary, patience, samples
        self.refs = [[cap.tokenize(c) for c in row] for row in data["captions"]]
        self.writer = tf.summary.create_file_writer(log_dir)
        self.curve, self.best, self.best_weights, self.wait = [], -1.0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        ids, alphas = cap.decoder_for(self.model).greedy(self.data["images"])
        words = [cap.decode_ids(i, self.vocabulary) for i in ids]
        scores = cap.bleu(self.refs, words)
        self.curve.append({"epoch": epoch + 1, **scores,
                           "val_token_ce": (logs or {}).get("val_token_ce")})
        step = int(self.model.optimizer.iterations.numpy())
        with self.writer.as_default(step=step):
            for name, value in scores.items():
                tf.summary.scalar(f"validation_{name}", value)
            lines = [f"**{' '.join(words[i]) or '(empty)'}**  \nreferences: "
                     + " / ".join(self.data["captions"][i]) for i in range(self.samples)]
            tf.summary.text("sample_captions", "\n\n".join(lines))
            for i in range(self.samples):
                if self.model.attention != "none" and words[i]:
                    picture = attention_picture(self.data["images"][i], words[i], alphas[i])
                    tf.summary.image(f"attention_maps/{i}", picture[None])
        self.writer.flush()
        if scores["bleu_4"] > self.best:
            self.best, self.wait = scores["bleu_4"], 0
            self.best_weights = [w.numpy() for w in self.model.weights]
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            for variable, value in zip(self.model.weights, self.best_weights):
                variable.assign(value)


def _subset(data, n):
    return {k: v[:n] for k, v in data.items()}


def _some_captions(train, k, seed, epoch):
    """`train` with k of each image's references, a random subset fixed by (seed, epoch)
    (so a resumed run sees the same batches); all of them when k >= their number."""
    tokens = train["tokens"]
    if k >= tokens.shape[1]:
        return train
    rng = np.random.default_rng([seed, epoch, 1])
    pick = np.argsort(rng.random(tokens.shape[:2]), axis=1, kind="stable")[:, :k]
    return {**train, "tokens": np.take_along_axis(tokens, pick[..., None], axis=1)}


def train_configurations(run, splits, vocabulary, names, max_length):
    config = run.config
    tokens = {s: cap.encode_captions(d["captions"], vocabulary, max_length)
              for s, d in splits.items()}
    train = {"image": splits["train"]["images"], "tokens": tokens["train"]}
    val = {"image": splits["validation"]["images"], "tokens": tokens["validation"]}
    regs = [float(r) for r in config.attention_reg]
    configurations = ([{"model": config.attention, "attention_reg": r} for r in regs]
                      + [{"model": "none", "attention_reg": 0.0}])
    seeds = list(range(config.seed, config.seed + config.caption_seeds))
    channels = [int(c) for c in config.caption_channels]

    def train_point(point):
        keras.utils.set_random_seed(point.seed)
        model_fn = lambda: cap.Captioner(  # noqa: E731
            vocabulary, image_size=train["image"].shape[1], max_length=max_length,
            channels=channels, embedding_dim=config.caption_embedding,
            units=config.caption_units, attention=point.hparams["model"],
            attention_units=config.caption_attention_units, dropout=config.caption_dropout,
            encoder=config.caption_encoder, backbone_weights=config.caption_backbone_weights)
        task = cap.CaptionTask(model_fn, lambda: keras.optimizers.Adam(config.learning_rate),
                               point.hparams["attention_reg"])
        monitor = CaptionMonitor(_subset(splits["validation"], 300), vocabulary,
                                 os.path.join(point.model_dir, "captions"),
                                 config.caption_patience)
        trainer = run.trainer(task, model_dir=point.model_dir, callbacks=[monitor])
        result = trainer.fit(
            lambda epoch: runtime.epoch_batches(
                _some_captions(train, config.caption_train_captions, point.seed, epoch),
                None, config.batch_size, seed=point.seed, epoch=epoch),
            config.epochs,
            validation_data=lambda: runtime.epoch_batches(
                val, None, config.batch_size, shuffle=False, drop_remainder=False))
        model = trainer.model
        if run.is_chief:
            model.save(os.path.join(point.model_dir, MODEL_FILE))
        metrics = {"status": result.status, "train_seconds": result.seconds,
                   "epochs_run": len(result.history),
                   "best_validation_bleu_4": monitor.best,
                   "bleu_curve": [c["bleu_4"] for c in monitor.curve],
                   "val_token_ce": result.final("validation").get("token_ce"),
                   "regions": int(model.regions)}
        for split in EVAL_SPLITS:
            if split in splits:
                scores, _ = evaluate_model(model, splits[split], vocabulary, names,
                                           config.beam_size)
                metrics.update({f"{split}/{k}": v for k, v in scores.items()})
        return metrics

    return run.sweep("train", configurations, train_point, seeds=seeds)


# ----------------------------------------------------------------------------- report
def _mean_sd(values):
    values = np.asarray([v for v in values if v is not None], np.float64)
    if not len(values):
        return float("nan"), float("nan"), 0
    sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return float(values.mean()), sd, len(values)


def _label(hp):
    if hp["model"] == "none":
        return "baseline (mean-pooled, no attention)"
    return f"{hp['model']} attention, lambda={hp['attention_reg']:g}"


def summarise(run, records, splits, names, vocabulary):
    config = run.config
    groups = {}
    for r in records:
        groups.setdefault(r["key"], []).append(r)

    def stat(key, name):
        return _mean_sd(r["metrics"].get(name) for r in groups[key])

    bleu_rows = []
    for key, rs in groups.items():
        for split in EVAL_SPLITS:
            if split not in splits:
                continue
            for decoding in ("greedy", "beam"):
                row = {"model": _label(rs[0]["hparams"]), "split": split,
                       "decoding": decoding if decoding == "greedy"
                       else f"beam {config.beam_size}", "seeds": len(rs)}
                for n in range(1, 5):
                    mean, sd, _ = stat(key, f"{split}/{decoding}/bleu_{n}")
                    row[f"BLEU-{n}"] = f"{mean:.1f}" + (f" ± {sd:.1f}" if sd == sd else "")
                bleu_rows.append(row)
    run.add_table("BLEU (NLTK corpus_bleu, x100; mean ± sd over seeds)", bleu_rows, key="bleu")
    import nltk

    run.add_text("How BLEU is computed", (
        f"NLTK {nltk.__version__} `nltk.translate.bleu_score.corpus_bleu`, uniform weights "
        "(1/n), `SmoothingFunction().method1` (only affects zero n-gram counts), all 5 "
        "references per image. Tokenisation: lower-case, regex `[a-z0-9]+|[,:]` (',' and ':' "
        "are tokens, as in the shape-scenes grammar); hypotheses without <start>/<end>. BLEU "
        "implementations disagree (huggingface/evaluate#693): compare only numbers computed "
        "the same way. Model selection (best epoch, early stopping, the attention configuration "
        "of the claims) used validation BLEU-4 only."))

    attention_keys = [k for k, rs in groups.items() if rs[0]["hparams"]["model"] != "none"]
    baseline_key = next(k for k, rs in groups.items() if rs[0]["hparams"]["model"] == "none")
    best_key = max(attention_keys, key=lambda k: stat(k, "best_validation_bleu_4")[0])

    # attention correctness, per shape, for every attention configuration
    rows = []
    shapes = [*names[0], "all"]
    for key in attention_keys:
        for split in EVAL_SPLITS:
            for shape in shapes:
                mass = stat(key, f"{split}/correct/{shape}/mass")[0]
                share = stat(key, f"{split}/correct/{shape}/share")[0]
                count = stat(key, f"{split}/correct/{shape}/count")[0]
                if count != count or not count:
                    continue
                rows.append({"model": _label(groups[key][0]["hparams"]), "split": split,
                             "shape": shape, "words": int(count), "mass in box": mass,
                             "box area share": share, "ratio": mass / share})
    if rows:
        run.add_table("Attention correctness (Liu et al. 2017): attention mass at each "
                      "generated shape word inside the named object's box vs the box's area "
                      "share (greedy captions; seed mean)", rows, key="attention_correctness")
    spread_rows = [{"model": _label(groups[k][0]["hparams"]), "split": split,
                    "effective regions exp(H)": stat(k, f"{split}/spread/effective_regions")[0],
                    "sum_i (1 - sum_t alpha_ti)^2": stat(k, f"{split}/spread/penalty")[0]}
                   for k in attention_keys for split in EVAL_SPLITS if split in splits]
    regions = groups[attention_keys[0]][0]["metrics"].get("regions", "?")
    run.add_table(f"Attention spread over a caption (greedy; of the {regions} regions)",
                  spread_rows, key="attention_spread")

    # claims
    comp = "compositional_test" if "compositional_test" in splits else "test"
    diffs = [a["metrics"][f"{comp}/greedy/bleu_4"] - b["metrics"][f"{comp}/greedy/bleu_4"]
             for a, b in zip(groups[best_key], groups[baseline_key])]
    mean, sd, n = _mean_sd(diffs)
    margin = 2 * sd / math.sqrt(n) if n > 1 else 0.0
    run.claim(f"Attention ({_label(groups[best_key][0]['hparams'])}, chosen on validation) "
              f"beats the no-attention baseline on {comp} BLEU-4 beyond seed noise",
              mean - margin, "> 0",
              f"mean BLEU-4 difference {mean:.2f} minus 2 SE ({margin:.2f}) over {n} seed(s)"
              + ("; one seed: seed noise unmeasured, cannot decide 'beyond noise'"
                 if n == 1 else ""))
    mass = stat(best_key, "test/correct/all/mass")[0]
    share = stat(best_key, "test/correct/all/share")[0]
    run.claim("Attention mass at a generated shape word inside the named object's box is well "
              "above the box's area share (Liu et al. 2017)", mass / share if share else None,
              "> 2", f"mass {mass:.3f} / area share {share:.3f}, test, greedy")
    regs = sorted({groups[k][0]["hparams"]["attention_reg"] for k in attention_keys})
    if len(regs) > 1:
        by_reg = {groups[k][0]["hparams"]["attention_reg"]: k for k in attention_keys}
        lo = stat(by_reg[regs[0]], "test/spread/effective_regions")[0]
        hi = stat(by_reg[regs[-1]], "test/spread/effective_regions")[0]
        run.claim(f"The doubly stochastic penalty (lambda={regs[-1]:g} vs {regs[0]:g}) spreads "
                  "attention over more regions across the caption", hi / lo, "> 1",
                  f"effective regions exp(H(sum_t alpha_t)) {hi:.1f} vs {lo:.1f}, test")
    greedy = stat(best_key, "test/greedy/bleu_4")[0]
    beam = stat(best_key, "test/beam/bleu_4")[0]
    run.claim(f"Beam search (k={config.beam_size}) scores at least as high as greedy decoding "
              "on test BLEU-4", beam - greedy, ">= 0",
              f"beam {beam:.2f} vs greedy {greedy:.2f} (summed log-prob, no length norm.)")
    if config.dataset == "coco_captions":
        run.add_text("Yardstick (real photos)", "Show-Attend-Tell soft attention: BLEU-1/4 = "
                     "67/19.5 on Flickr8k, 70.7/24.3 on COCO (Xu et al. 2015, Table 1).")
    return groups, best_key, baseline_key


def report_figures(run, groups, best_key, baseline_key, splits, vocabulary, names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, rs in groups.items():
        curve = rs[0]["metrics"].get("bleu_curve") or []
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=_label(rs[0]["hparams"]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation BLEU-4 (greedy)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    run.add_figure("bleu_vs_epoch", fig, "Validation BLEU-4 per epoch (first seed)")

    best_dir = groups[best_key][0]["model_dir"]
    model = keras.saving.load_model(os.path.join(best_dir, MODEL_FILE), safe_mode=True)
    if run.is_chief:
        shutil.copyfile(os.path.join(best_dir, MODEL_FILE),
                        os.path.join(run.model_dir, MODEL_FILE))
    baseline = keras.saving.load_model(
        os.path.join(groups[baseline_key][0]["model_dir"], MODEL_FILE), safe_mode=True)
    decoder, base_decoder = cap.decoder_for(model), cap.decoder_for(baseline)
    pictures, titles, lines = [], [], []
    for split in EVAL_SPLITS:
        if split not in splits:
            continue
        data = _subset(splits[split], 3)
        ids, alphas = decoder.beam(data["images"], run.config.beam_size)
        greedy_ids, _ = decoder.greedy(data["images"])
        base_ids, _ = base_decoder.beam(data["images"], run.config.beam_size)
        for i in range(len(ids)):
            words = cap.decode_ids(ids[i], vocabulary)
            pictures.append(attention_picture(data["images"][i], words, alphas[i]))
            titles.append(f"{split}: {' '.join(words)}")
            lines.append(f"| {split} | {' '.join(words)} | "
                         f"{' '.join(cap.decode_ids(greedy_ids[i], vocabulary))} | "
                         f"{' '.join(cap.decode_ids(base_ids[i], vocabulary))} | "
                         f"{' / '.join(data['captions'][i][:2])} |")
    run.add_figure("attention_maps", _figure_of(pictures, titles),
                   "Attention map per generated word (beam search; brighter = more attention)")
    run.add_text("Sample captions", "| split | attention, beam | attention, greedy | "
                 "baseline, beam | two references |\n|---|---|---|---|---|\n" + "\n".join(lines))


def experiment(run):
    config = run.config
    splits, names = load_splits(config)
    if config.dataset == "shape_scenes":
        from experiments.data import shape_scenes as scenes

        vocabulary = list(cap.SPECIALS) + list(scenes.VOCABULARY)
    else:
        vocabulary = build_vocabulary(splits["train"]["captions"], min_count=5)
    lengths = [len(cap.tokenize(c)) for c in splits["train"]["captions"].reshape(-1)]
    max_length = min(max(lengths), 30) + 2
    run.data["data"] = {s: len(d["images"]) for s, d in splits.items()}
    records = train_configurations(run, splits, vocabulary, names, max_length)
    groups, best_key, baseline_key = summarise(run, records, splits, names, vocabulary)
    report_figures(run, groups, best_key, baseline_key, splits, vocabulary, names)
    for key, rs in groups.items():
        for name in ("compositional_test/greedy/bleu_4", "test/greedy/bleu_4",
                     "test/beam/bleu_4", "test/correct/all/mass", "test/correct/all/share",
                     "test/spread/effective_regions", "train_seconds"):
            mean = _mean_sd(r["metrics"].get(name) for r in rs)[0]
            if mean == mean:
                run.metrics[f"{key}/{name}"] = mean
    run.metrics["selected_attention_configuration"] = best_key


# ----------------------------------------------------------------------------- predict
def predict(model_dir, image_path, beam_size=3, out=None):
    """Captions one image with model_dir/captioner.keras; writes its attention maps PNG.

    Returns (caption words, path of the PNG). Raises ConfigError on a missing/bad image or model.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.path.join(model_dir or "", MODEL_FILE)
    if not model_dir or not os.path.exists(path):
        raise ConfigError(f"no trained captioner at {path}: pass --model_dir of a finished run")
    try:
        with Image.open(image_path) as im:
            image = im.convert("RGB")
    except FileNotFoundError:
        raise ConfigError(f"--predict={image_path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"--predict={image_path}: not a readable image "
                          f"({type(e).__name__})") from None
    model = keras.saving.load_model(path, safe_mode=True)
    image = np.asarray(image.resize((model.image_size, model.image_size),
                                    Image.Resampling.BILINEAR), np.uint8)
    ids, alphas = cap.decoder_for(model).beam(image[None], beam_size)
    words = cap.decode_ids(ids[0], model.vocabulary)
    out = out or os.path.splitext(image_path)[0] + "_attention.png"
    Image.fromarray(attention_picture(image, words, alphas[0], scale=3)).save(out)
    return words, out


def predict_command(config):
    """`--predict=IMAGE --model_dir=RUN`: the caption and where its attention maps went."""
    words, out = predict(config.model_dir, config.predict, config.beam_size, config.predict_out)
    return f"{' '.join(words)}\nattention maps: {out}"


EXPERIMENT = runtime.Experiment(
    "caption_attention", experiment,
    defaults={"epochs": 4, "batch_size": 32, "learning_rate": 2e-3},
    quick={"epochs": 2, "caption_data": "quick", "caption_seeds": 1, "caption_units": 64,
           "caption_attention_units": 32, "caption_eval_images": 300},
    datasets=DATASETS, predict=predict_command)

if __name__ == "__main__":
    EXPERIMENT.launch()
