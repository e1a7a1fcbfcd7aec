"""Show-Attend-Tell captioning pieces: the captioner model, its Task, decoding, BLEU, attention metrics.

Used by `experiments/caption_attention.py` (the science and the runs); kept apart so tests can
call each piece on tiny settings.

Model (Xu et al. 2015, "Show, Attend and Tell", sections 3.1-3.2, soft attention):
    a = CNN(image) -> (R, C) region features (+ a learned position embedding per region)
    h_0, c_0 = tanh(W_h mean(a)), tanh(W_c mean(a))
    per step t:  z_t, alpha_t = attention(h_{t-1}, a)          (AdditiveAttention or dot)
                 z_t <- sigmoid(w_b . h_{t-1}) * z_t             (the gating scalar beta, 4.2.1)
                 h_t, c_t = LSTMCell([E y_{t-1}, z_t], [h_{t-1}, c_{t-1}])
                 logits_t = L_o(dropout(E y_{t-1} + L_h h_t + L_z z_t))   (deep output, eq. 7)
The no-attention baseline is the same decoder with z_t = mean(a) at every step.

Loss (through the runtime's Task seam), for a replica's slice of captions b and real tokens t:
    loss_sum = sum_{b,t real} CE(y_bt)  +  lambda * sum_b sum_i (1 - sum_{t real} alpha_bti)^2
    weight   = number of real tokens
so the optimised all_reduce(loss_sum) / all_reduce(weight) is Xu et al.'s per-caption objective
(-log p(y|x) + lambda * doubly stochastic penalty, summed over the global batch) divided by
the global token count: the per-token CE mean plus the penalty per token, exact on N replicas.
"""

import math
import re
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from experiments.runtime.task import Task
from layers.attention import AdditiveAttention, DotProductAttention
from layers.blocks import ResidualBlock
from layers.recurrent import LSTMCell

PACKAGE = "caption_attention"
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
ATTENTIONS = ("additive", "dot", "none")
_TOKEN = re.compile(r"[a-z0-9]+|[,:]")


# --------------------------------------------------------------------------- text
def tokenize(text):
    """Lower-case word tokens; "," and ":" are tokens of their own (as in shape_scenes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _TOKEN.findall(text.lower())


def encode_captions(captions, vocabulary, max_length):
    """(n, k) caption strings -> int32 (n, k, max_length) ids <start> w... <end> <pad>...

    An empty caption becomes all padding (it then carries no loss). Long captions are cut to
    fit (keeping <end>).
    """
    index = {w: i for i, w in enumerate(vocabulary)}
    captions = np.asarray(captions, dtype=object)
    out = np.zeros(captions.shape + (max_length,), np.int32)
    for pos in np.ndindex(captions.shape):
        words = tokenize(captions[pos])
        if not words:
            continue
        ids = [index[START]] + [index.get(w, index[UNK]) for w in words][:max_length - 2]
        ids.append(index[END])
        out[pos][:len(ids)] = ids
    return out


def decode_ids(ids, vocabulary):
    """Token ids -> words, stopping at <end> (specials dropped)."""
    words = []
    for i in ids:
        word = vocabulary[int(i)]
        if word == END:
            break
        if word not in SPECIALS:
            words.append(word)
    return words


# --------------------------------------------------------------------------- model
def build_encoder(image_size, channels, encoder="cnn", backbone_weights=None):
    """Image -> (R, C) region features.

    "cnn": stride-2 conv stem and two stride-2 ResidualBlocks (image_size / 8 squared regions,
    8 x 8 for 64 px), trained from scratch. "mobilenet_v2": keras.applications backbone
    (32x downsampling; `backbone_weights="imagenet"` for real photos, needs the weights file).
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ops.cast(inputs, "float32")
    if encoder == "mobilenet_v2":
        x = keras.applications.mobilenet_v2.preprocess_input(x)
        backbone = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), include_top=False,
            weights=backbone_weights)
        x = keras.layers.Conv2D(channels[-1], 1, name="project")(backbone(x))
    else:
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x)
        x = keras.layers.Conv2D(channels[0], 3, strides=2, padding="same", use_bias=False,
                                name="stem")(x)
        # BN momentum 0.9 (not 0.99): runs of a few hundred steps need moving statistics
        # that have caught up, or validation (inference mode) lags training.
        x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
        x = keras.layers.ReLU()(x)
        x = ResidualBlock(channels[1], strides=2, momentum=0.9, name="block1")(x)
        x = ResidualBlock(channels[2], strides=2, momentum=0.9, name="block2")(x)
    grid = x.shape[1] * x.shape[2]
    x = keras.layers.Reshape((grid, x.shape[-1]), name="regions")(x)
    return keras.Model(inputs, x, name="encoder")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Captioner(keras.Model):
    """Show-Attend-Tell captioner (module docstring); `attention="none"` is the baseline.

    Call with {"image": uint8 (B, S, S, 3), "tokens": int32 (B, N, L)} (N captions per image,
    teacher forcing on tokens[..., :-1]); returns (logits (B*N, L-1, V), alphas (B*N, L-1, R)).
    All weights are created in the constructor, so a loaded .keras model needs no call first.
    """

    def __init__(self, vocabulary, image_size=64, max_length=24, channels=(32, 48, 64),
                 embedding_dim=64, units=192, attention="additive", attention_units=128,
                 dropout=0.2, encoder="cnn", backbone_weights=None, **kwargs):
        super().__init__(**kwargs)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.vocabulary = list(vocabulary)
        self.image_size, self.max_length = int(image_size), int(max_length)
        self.channels = [int(c) for c in channels]
        self.embedding_dim, self.units = int(embedding_dim), int(units)
        self.attention, self.attention_units = attention, int(attention_units)
        self.dropout_rate, self.encoder_name = float(dropout), encoder
        self.backbone_weights = backbone_weights
        vocab, feat = len(self.vocabulary), self.channels[-1]

        self.encoder = build_encoder(self.image_size, self.channels, encoder, backbone_weights)
        self.regions = self.encoder.output.shape[1]
        self.position = self.add_weight(name="position", shape=(self.regions, feat),
                                        initializer=keras.initializers.RandomNormal(0, 0.02))
        self.embedding = keras.layers.Embedding(vocab, self.embedding_dim, name="embedding")
        self.init_h = keras.layers.Dense(self.units, activation="tanh", name="init_h")
        self.init_c = keras.layers.Dense(self.units, activation="tanh", name="init_c")
        # Keys are projected once per image, not once per step: for additive attention
        # score_ti = v . tanh(W_q h_t + W_k a_i) is AdditiveAttention(projections=False) on the
        # projected query and keys (the same function as its projections=True form).
        self.key_proj = self.query_proj = None
        if attention == "additive":
            self.key_proj = keras.layers.Dense(self.attention_units, use_bias=False,
                                               name="key_proj")
            self.query_proj = keras.layers.Dense(self.attention_units, use_bias=False,
                                                 name="query_proj")
            self.query_proj.build((None, self.units))
            self.attend = AdditiveAttention(projections=False, name="attention")
            self.attend.build([(None, self.attention_units), (None, self.regions, feat),
                               (None, self.regions, self.attention_units)])
        elif attention == "dot":
            self.key_proj = keras.layers.Dense(self.units, name="key_proj")
            self.attend = DotProductAttention(scale_by_sqrt_dim=True, name="attention")
            self.attend.build([(None, self.units), (None, self.regions, feat),
                               (None, self.regions, self.units)])
        if self.key_proj is not None:
            self.key_proj.build((None, self.regions, feat))
        self.gate = keras.layers.Dense(1, activation="sigmoid", name="beta")
        self.cell = LSTMCell(self.units, name="lstm")
        self.out_h = keras.layers.Dense(self.embedding_dim, name="out_h")
        self.out_z = keras.layers.Dense(self.embedding_dim, name="out_z")
        self.drop = keras.layers.Dropout(self.dropout_rate)
        self.logits = keras.layers.Dense(vocab, name="logits")
        self.embedding.build((None,))
        for layer, dim in ((self.init_h, feat), (self.init_c, feat), (self.gate, self.units),
                           (self.out_h, self.units), (self.out_z, feat),
                           (self.logits, self.embedding_dim)):
            layer.build((None, dim))
        self.cell.build((None, self.embedding_dim + feat))
        self.built = True

    # -- pieces shared by teacher forcing and decoding
    def encode(self, images, training=False):
        """uint8 images -> (features (B, R, C), keys (B, R, K) or None, state [h, c])."""
        features = self.encoder(images, training=training) + self.position
        mean = ops.mean(features, axis=1)
        keys = self.key_proj(features) if self.key_proj is not None else features
        return features, keys, [self.init_h(mean), self.init_c(mean)]

    def step(self, tokens, state, features, keys, training=False):
        """One decoder step: previous tokens (B,) -> (logits (B, V), new state, alpha (B, R))."""
        h, c = state
        if self.attention == "none":
            context = ops.mean(features, axis=1)
            alpha = ops.ones(ops.shape(features)[:2]) / self.regions
        else:
            query = self.query_proj(h) if self.query_proj is not None else h
            context, alpha = self.attend([query, features, keys], return_attention_scores=True)
        context = self.gate(h) * context
        embedded = self.embedding(tokens)
        h, (h, c) = self.cell(ops.concatenate([embedded, context], axis=-1), [h, c])
        deep = embedded + self.out_h(h) + self.out_z(context)
        return self.logits(self.drop(deep, training=training)), [h, c], alpha

    def call(self, inputs, training=False):
        images, tokens = inputs["image"], inputs["tokens"]
        per_image, length = tokens.shape[1], tokens.shape[2]
        features, keys, state = self.encode(images, training=training)
        if per_image > 1:
            features, keys = (ops.repeat(x, per_image, axis=0) for x in (features, keys))
            state = [ops.repeat(s, per_image, axis=0) for s in state]
        tokens = ops.reshape(tokens, (-1, length))

        def body(carry, token):
            _, _, h, c = carry
            logits, (h, c), alpha = self.step(token, [h, c], features, keys, training)
            return logits, alpha, h, c

        batch = ops.shape(tokens)[0]
        initial = (tf.zeros((batch, len(self.vocabulary)), self.compute_dtype),
                   tf.zeros((batch, self.regions), self.compute_dtype), *state)
        # tf.scan (a while loop): graph size and trace time do not grow with caption length.
        logits, alphas, _, _ = tf.scan(body, tf.transpose(tokens[:, :-1]), initializer=initial)
        return tf.transpose(logits, (1, 0, 2)), tf.transpose(alphas, (1, 0, 2))

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary,
                "image_size": self.image_size, "max_length": self.max_length,
                "channels": self.channels, "embedding_dim": self.embedding_dim,
                "units": self.units, "attention": self.attention,
                "attention_units": self.attention_units, "dropout": self.dropout_rate,
                "encoder": self.encoder_name, "backbone_weights": self.backbone_weights}


# --------------------------------------------------------------------------- loss / Task
def doubly_stochastic(alphas, mask):
    """Per caption sum_i (1 - sum_{t real} alpha_ti)^2 (Xu et al. 2015, eq. 14).

    Args:
        alphas: (B, T, R) attention weights.
        mask: (B, T) 1 for real target tokens, 0 for padding.
    """
    coverage = tf.reduce_sum(alphas * tf.cast(mask, alphas.dtype)[..., None], axis=1)
    return tf.reduce_sum(tf.square(1.0 - coverage), axis=-1)


def caption_loss(model, batch, training, attention_reg):
    """(loss_sum, weight, outputs) of the module docstring for one replica's batch."""
    logits, alphas = model(batch, training=training)
    tokens = batch["tokens"]
    targets = tf.reshape(tokens[..., 1:], (-1, tokens.shape[-1] - 1))
    mask = tf.cast(targets != 0, tf.float32)
    ce = keras.losses.sparse_categorical_crossentropy(targets, tf.cast(logits, tf.float32),
                                                      from_logits=True) * mask
    caption_mask = tf.cast(tf.reduce_any(targets != 0, axis=-1), tf.float32)
    penalty = tf.zeros_like(caption_mask)
    if model.attention != "none":
        penalty = doubly_stochastic(tf.cast(alphas, tf.float32), mask) * caption_mask
    loss_sum = tf.reduce_sum(ce) + attention_reg * tf.reduce_sum(penalty)
    outputs = {"ce": ce, "mask": mask, "logits": logits, "penalty": penalty,
               "caption_mask": caption_mask, "targets": targets}
    return loss_sum, tf.reduce_sum(mask), outputs


class CaptionTask(Task):
    """Trains `model_fn()` with the caption loss; metrics token_ce (per-token CE over the
    global batch), token_accuracy and attention_penalty (per caption)."""

    def __init__(self, model_fn, optimizer_fn, attention_reg):
        self.model_fn, self.optimizer_fn = model_fn, optimizer_fn
        self.attention_reg = float(attention_reg)

    def build_model(self):
        return self.model_fn()

    def build_optimizer(self):
        return self.optimizer_fn()

    def build_metrics(self):
        return [keras.metrics.Mean(name="token_ce"),
                keras.metrics.SparseCategoricalAccuracy(name="token_accuracy"),
                keras.metrics.Mean(name="attention_penalty")]

    def compute_loss(self, model, batch, training):
        return caption_loss(model, batch, training, self.attention_reg)

    def update_metrics(self, metrics, batch, outputs):
        ce, accuracy, penalty = metrics
        ce.update_state(outputs["ce"], sample_weight=outputs["mask"])
        accuracy.update_state(outputs["targets"], outputs["logits"],
                              sample_weight=outputs["mask"])
        penalty.update_state(outputs["penalty"], sample_weight=outputs["caption_mask"])


# --------------------------------------------------------------------------- decoding
_DECODERS = weakref.WeakKeyDictionary()

def decoder_for(model):
    """The (cached) Decoder of `model`: its compiled functions are traced once per model."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = Decoder(model)
    return decoder


class Decoder:
    """Greedy and beam-search decoding of a Captioner with compiled encode/step functions."""

    def __init__(self, model):
        self.model = model
        self.start = model.vocabulary.index(START)
        self.end = model.vocabulary.index(END)
        size, regions = model.image_size, model.regions
        keys = model.attention_units if model.attention == "additive" else (
            model.units if model.attention == "dot" else model.channels[-1])
        # Fixed signatures with a free batch size: one trace per Decoder, whatever the batch.
        self._encode = tf.function(
            lambda x: model.encode(x, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)])
        state = tf.TensorSpec((None, model.units), tf.float32)
        self._step = tf.function(self._log_step, input_signature=[
            tf.TensorSpec((None,), tf.int32), state, state,
            tf.TensorSpec((None, regions, model.channels[-1]), tf.float32),
            tf.TensorSpec((None, regions, keys), tf.float32)])

    def _log_step(self, tokens, h, c, features, keys):
        logits, (h, c), alpha = self.model.step(tokens, [h, c], features, keys,
                                                training=False)
        return tf.nn.log_softmax(logits), h, c, alpha

    def greedy(self, images, max_length=None, batch_size=256):
        """Argmax decoding. Returns (token id lists without <start>/<end>, alphas (T_i, R) each)."""
        return self._batched(self._greedy, images, max_length, batch_size)

    def beam(self, images, beam_size=3, max_length=None, batch_size=128):
        """Beam search on the summed log-probability (no length normalisation); a hypothesis
        ends at <end>. beam_size=1 is greedy decoding. Returns like `greedy`."""
        return self._batched(lambda x, m: self._beam(x, beam_size, m), images, max_length,
                             batch_size)

    def _batched(self, fn, images, max_length, batch_size):
        max_length = max_length or self.model.max_length - 1
        tokens, alphas = [], []
        for i in range(0, len(images), batch_size):
            t, a = fn(np.asarray(images[i:i + batch_size]), max_length)
            tokens += t
            alphas += a
        return tokens, alphas

    def _greedy(self, images, max_length):
        features, keys, (h, c) = self._encode(tf.constant(images))
        n = len(images)
        token = np.full(n, self.start, np.int32)
        done = np.zeros(n, bool)
        out, maps = [[] for _ in range(n)], [[] for _ in range(n)]
        for _ in range(max_length):
            log_p, h, c, alpha = self._step(tf.constant(token), h, c, features, keys)
            token = np.argmax(log_p.numpy(), axis=-1).astype(np.int32)
            alpha = alpha.numpy()
            for b in np.flatnonzero(~done):
                if token[b] == self.end:
                    done[b] = True
                else:
                    out[b].append(int(token[b]))
                    maps[b].append(alpha[b])
            if done.all():
                break
        regions = features.shape[1]
        return out, [np.asarray(m, np.float32).reshape(len(m), regions) for m in maps]

    def _beam(self, images, k, max_length):
        features, keys, (h, c) = self._encode(tf.constant(images))
        n, regions = len(images), features.shape[1]
        features, keys = tf.repeat(features, k, axis=0), tf.repeat(keys, k, axis=0)
        h, c = tf.repeat(h, k, axis=0), tf.repeat(c, k, axis=0)
        scores = np.full((n, k), -np.inf)
        scores[:, 0] = 0.0  # one live hypothesis per image at the start
        seqs = np.zeros((n, k, 0), np.int32)
        maps = np.zeros((n, k, 0, regions), np.float32)
        finished = np.zeros((n, k), bool)
        token = np.full(n * k, self.start, np.int32)
        for _ in range(max_length):
            log_p, h, c, alpha = self._step(tf.constant(token), h, c, features, keys)
            log_p = log_p.numpy().reshape(n, k, -1).astype(np.float64)
            vocab = log_p.shape[-1]
            # A finished hypothesis extends only by <end> at no cost (it stays as it is).
            log_p[finished] = -np.inf
            log_p[finished, self.end] = 0.0
            total = (scores[..., None] + log_p).reshape(n, -1)
            # Stable top-k (ties keep the lower index, as argmax does).
            best = np.argsort(-total, axis=-1, kind="stable")[:, :k]
            parent, word = best // vocab, (best % vocab).astype(np.int32)
            scores = np.take_along_axis(total, best, axis=-1)
            rows = (np.arange(n)[:, None] * k + parent).reshape(-1)
            was_finished = np.take_along_axis(finished, parent, axis=-1)
            finished = was_finished | (word == self.end)
            seqs = np.concatenate([np.take_along_axis(seqs, parent[..., None], axis=1),
                                   word[..., None]], axis=-1)
            maps = np.concatenate(
                [np.take_along_axis(maps, parent[..., None, None], axis=1),
                 alpha.numpy()[rows].reshape(n, k, 1, regions)], axis=2)
            h, c = tf.gather(h, rows), tf.gather(c, rows)
            token = word.reshape(-1)
            if finished[np.isfinite(scores)].all():
                break
        top = np.argmax(scores, axis=-1)
        out, out_maps = [], []
        for b in range(n):
            seq = seqs[b, top[b]]
            length = int(np.argmax(seq == self.end)) if (seq == self.end).any() else len(seq)
            out.append([int(t) for t in seq[:length]])
            out_maps.append(maps[b, top[b], :length])
        return out, out_maps


# --------------------------------------------------------------------------- BLEU
def bleu(references, hypotheses):
    """BLEU-1..4 (x100) with NLTK corpus_bleu, smoothing method1 (only zero n-gram counts).

    Args:
        references: Per image, a list of reference token lists (empty ones are dropped).
        hypotheses: Per image, a token list.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    refs = [[r for r in rs if r] for rs in references]
    smooth = SmoothingFunction().method1
    weights = [(1.0,), (0.5, 0.5), (1 / 3,) * 3, (0.25,) * 4]
    scores = corpus_bleu(refs, hypotheses, weights=weights, smoothing_function=smooth)
    return {f"bleu_{n}": 100.0 * s for n, s in enumerate(scores, start=1)}


# --------------------------------------------------------------------------- attention metrics
def cell_coverage(box, grid):
    """Fraction of each of grid x grid cells inside a normalised [ymin, xmin, ymax, xmax] box,
    flattened row-major (the order of the encoder's regions)."""
    edges = np.linspace(0.0, 1.0, grid + 1)
    y = np.clip(np.minimum(edges[1:], box[2]) - np.maximum(edges[:-1], box[0]), 0, None)
    x = np.clip(np.minimum(edges[1:], box[3]) - np.maximum(edges[:-1], box[1]), 0, None)
    return (np.outer(y, x) * grid * grid).reshape(-1)


def named_objects(words, shapes, colours):
    """(step, shape, colour or None) for every generated word naming a shape (singular or plural);
    the colour is the one named just before it (a size word may sit between)."""
    found = []
    for t, word in enumerate(words):
        shape = word[:-1] if word.endswith("s") and word[:-1] in shapes else word
        if shape not in shapes:
            continue
        colour = None
        for prev in reversed(words[max(0, t - 2):t]):
            if prev in colours:
                colour = prev
                break
        found.append((t, shape, colour))
    return found


def attention_correctness(words, alphas, objects, shapes, colours):
    """Liu et al. (2017)-style attention correctness for one generated caption.

    For each word naming a shape that matches objects of the image (same shape, and colour if
    one was named), the attention mass at that step inside the union of their boxes (cells
    partly inside count by the covered fraction) and the union's share of the image (what
    uniform attention would give).

    Args:
        words: Generated words.
        alphas: (len(words), R) attention weights, R = grid^2 row-major.
        objects: List of dicts {"bbox" [ymin, xmin, ymax, xmax] normalised, "shape", "colour"}.

    Returns:
        List of {"shape", "mass", "share"} (unmatched words are left out).
    """
    grid = int(round(math.sqrt(alphas.shape[-1]))) if len(alphas) else 0
    out = []
    for t, shape, colour in named_objects(words, shapes, colours):
        matches = [o for o in objects if o["shape"] == shape
                   and (colour is None or o["colour"] == colour)]
        if not matches:
            continue
        inside = np.clip(sum(cell_coverage(o["bbox"], grid) for o in matches), 0.0, 1.0)
        out.append({"shape": shape, "mass": float(np.sum(alphas[t] * inside)),
                    "share": float(inside.mean())})
    return out


def attention_spread(alphas):
    """Per caption: effective number of regions exp(H(p)), p_i = sum_t alpha_ti / T, and the
    doubly stochastic penalty sum_i (1 - sum_t alpha_ti)^2."""
    if len(alphas) == 0:
        return float("nan"), float("nan")
    coverage = np.asarray(alphas, np.float64).sum(0)
    p = coverage / coverage.sum()
    entropy = -np.sum(p * np.log(np.clip(p, 1e-12, None)))
    return float(np.exp(entropy)), float(np.sum((1.0 - coverage) ** 2))
