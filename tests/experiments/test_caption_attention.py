"""Show-Attend-Tell captioning: the loss seam (padding, replicas, the doubly stochastic term),
decoding (beam 1 == greedy), BLEU wiring, attention correctness, .keras round trip, a tiny
end-to-end run and --predict."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import captioning as cap
from experiments.runtime import Trainer, epoch_batches

VOCAB = list(cap.SPECIALS) + ["a", "red", "blue", "circle", "square", "two", "circles"]
LENGTH = 7


def _model(attention="additive", seed=3, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return cap.Captioner(VOCAB, image_size=32, max_length=LENGTH, channels=(4, 4, 8),
                         embedding_dim=8, units=12, attention=attention, attention_units=6,
                         dropout=dropout)


def _batch(n=4, per_image=2, pad_to=LENGTH, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype("uint8")
    tokens = np.zeros((n, per_image, pad_to), "int32")
    lengths = rng.integers(1, LENGTH - 1, (n, per_image))  # very unequal real lengths
    for i in range(n):
        for j in range(per_image):
            words = rng.integers(4, len(VOCAB), lengths[i, j])
            tokens[i, j, :lengths[i, j] + 2] = [1, *words, 2]
    return {"image": images, "tokens": tokens}


def _loss_and_grads(model, batch, reg=1.0):
    with tf.GradientTape() as tape:
        loss_sum, weight, _ = cap.caption_loss(model, batch, False, reg)
        loss = loss_sum / weight
    grads = tape.gradient(loss, model.trainable_variables)
    return loss_sum, weight, [tf.convert_to_tensor(g) for g in grads]


def test_padding_changes_neither_loss_nor_gradients():
    model = _model()
    batch = _batch()
    padded = {"image": batch["image"],
              "tokens": np.pad(batch["tokens"], ((0, 0), (0, 0), (0, 5)))}
    s1, w1, g1 = _loss_and_grads(model, batch)
    s2, w2, g2 = _loss_and_grads(model, padded)
    assert float(w1) == float(w2) == float(np.sum(batch["tokens"][..., 1:] != 0))
    np.testing.assert_allclose(float(s1), float(s2), rtol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_doubly_stochastic_term_equals_its_formula():
    rng = np.random.default_rng(1)
    alphas = rng.random((3, 5, 4)).astype("float32")
    alphas /= alphas.sum(-1, keepdims=True)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], "float32")
    expected = [np.sum((1.0 - (alphas[b] * mask[b][:, None]).sum(0)) ** 2) for b in range(3)]
    np.testing.assert_allclose(cap.doubly_stochastic(tf.constant(alphas), tf.constant(mask)),
                               expected, rtol=1e-6)
    # And in the loss: reg=1 minus reg=0 is exactly the summed penalty of real captions.
    model, batch = _model(), _batch()
    (s1, _, out), (s0, _, _) = (cap.caption_loss(model, batch, False, r) for r in (1.0, 0.0))
    _, alphas = model(batch)
    targets = batch["tokens"].reshape(-1, LENGTH)[:, 1:]
    manual = sum(np.sum((1 - (a * (t != 0)[:, None]).sum(0)) ** 2)
                 for a, t in zip(np.asarray(alphas), targets))
    np.testing.assert_allclose(float(s1 - s0), manual, rtol=1e-5)


def test_loss_on_two_replicas_equals_one_device(two_cpus, mirrored_two_cpus):
    data = _batch(n=8, per_image=2, seed=5)

    def frozen_bn_model():
        # BatchNormalization normalises with each replica's own batch statistics (Keras does
        # not synchronise them by default), so only the loss seam is exact on N replicas; with
        # BN in inference mode, training must match one device to float noise.
        model = _model()
        for layer in model.encoder._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model

    def trainer(strategy):
        task = cap.CaptionTask(frozen_bn_model, lambda: keras.optimizers.Adam(1e-2), 1.0)
        return Trainer(strategy, task, 8, verbose=0)

    expected_sum, expected_weight, _ = cap.caption_loss(_model(), data, False, 1.0)
    expected = float(expected_sum / expected_weight)
    batches = lambda: epoch_batches(data, None, 8, shuffle=False)  # noqa: E731
    one = trainer(tf.distribute.OneDeviceStrategy(two_cpus[0]))
    two = trainer(mirrored_two_cpus)
    assert one.evaluate(batches)["loss"] == pytest.approx(expected, rel=1e-5)
    assert two.evaluate(batches)["loss"] == pytest.approx(expected, rel=1e-5)
    r1 = one.fit(lambda epoch: batches(), 1)
    r2 = two.fit(lambda epoch: batches(), 1)
    assert r1.history[-1]["train"]["loss"] == pytest.approx(r2.history[-1]["train"]["loss"],
                                                            rel=1e-4)
    for a, b in zip(one.model.weights, two.model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)


def test_beam_size_one_equals_greedy():
    model = _model(seed=7)
    images = _batch(n=6, seed=2)["image"]
    decoder = cap.decoder_for(model)
    g_ids, g_alphas = decoder.greedy(images)
    b_ids, b_alphas = decoder.beam(images, beam_size=1)
    assert g_ids == b_ids
    for a, b in zip(g_alphas, b_alphas):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    ids3, _ = decoder.beam(images, beam_size=3)
    assert all(len(i) <= LENGTH - 1 and 2 not in i for i in ids3)


def test_bleu_wiring_matches_nltk_on_known_strings():
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    refs = [["a red circle above a blue square", "a circle above a square"],
            ["two red circles , a blue square"]]
    hyps = ["a red circle above a square", "two red circles and a square"]
    ref_tokens = [[cap.tokenize(r) for r in rs] for rs in refs]
    hyp_tokens = [cap.tokenize(h) for h in hyps]
    assert ref_tokens[1][0] == ["two", "red", "circles", ",", "a", "blue", "square"]
    scores = cap.bleu(ref_tokens, hyp_tokens)
    smooth = SmoothingFunction().method1
    for n in range(1, 5):
        expected = corpus_bleu(ref_tokens, hyp_tokens, weights=(1.0 / n,) * n,
                               smoothing_function=smooth)
        assert scores[f"bleu_{n}"] == pytest.approx(100 * expected)
    assert cap.bleu(ref_tokens, [r[0] for r in ref_tokens])["bleu_4"] == pytest.approx(100.0)
    # empty references (real data with fewer captions) are dropped, not scored
    assert cap.bleu([[["a", "b", "c", "d"], []]], [["a", "b", "c", "d"]])["bleu_4"] == \
        pytest.approx(100.0)


def test_attention_correctness_on_a_hand_built_map():
    shapes, colours = ("circle", "square"), ("red", "blue")
    objects = [{"bbox": np.array([0.0, 0.0, 0.5, 0.5]), "shape": "circle", "colour": "red"},
               {"bbox": np.array([0.5, 0.5, 1.0, 1.0]), "shape": "circle", "colour": "blue"},
               {"bbox": np.array([0.0, 0.5, 0.25, 1.0]), "shape": "square", "colour": "blue"}]
    alphas = np.zeros((6, 16))
    alphas[2, 0] = 1.0                 # "circle" (red): all mass in the top-left cell
    alphas[5, [3, 15]] = 0.5           # "circles": half in the blue square, half in the blue circle
    words = ["a", "red", "circle", "and", "two", "circles"]
    hits = cap.attention_correctness(words, alphas, objects, shapes, colours)
    assert [h["shape"] for h in hits] == ["circle", "circle"]
    assert hits[0]["mass"] == pytest.approx(1.0) and hits[0]["share"] == pytest.approx(0.25)
    # plural without a colour: the union of both circles (half the image); cell 15 is inside
    assert hits[1]["mass"] == pytest.approx(0.5) and hits[1]["share"] == pytest.approx(0.5)
    # an unmatched (hallucinated) object is left out; partial cells count by covered fraction
    assert cap.attention_correctness(["a", "red", "square"], alphas[:3], objects, shapes,
                                     colours) == []
    cover = cap.cell_coverage(np.array([0.0, 0.0, 0.125, 0.125]), 4)
    assert cover[0] == pytest.approx(0.25) and cover[1:].sum() == 0
    effective, penalty = cap.attention_spread(np.full((4, 16), 1 / 16))
    assert effective == pytest.approx(16) and penalty == pytest.approx(16 * 0.75 ** 2)


def test_keras_round_trip_gives_the_same_captions(tmp_path):
    model = _model(seed=11)
    images = _batch(n=4, seed=9)["image"]
    before = cap.decoder_for(model).beam(images, 2)[0]
    path = str(tmp_path / "captioner.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.vocabulary == VOCAB and loaded.attention == "additive"
    assert cap.decoder_for(loaded).beam(images, 2)[0] == before
    assert cap.decoder_for(loaded).greedy(images)[0] == cap.decoder_for(model).greedy(images)[0]


def test_reference_subset_per_epoch_is_fixed_by_seed_and_epoch():
    from experiments.caption_attention import _some_captions

    tokens = np.arange(6 * 5 * 3).reshape(6, 5, 3)
    train = {"image": np.zeros((6, 2, 2, 3), "uint8"), "tokens": tokens}
    a, b = (_some_captions(train, 2, seed=1, epoch=0) for _ in range(2))
    assert a["tokens"].shape == (6, 2, 3) and a["image"] is train["image"]
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    for i in range(6):  # each image keeps two distinct references of its own
        rows = [tuple(r) for r in a["tokens"][i]]
        assert len(set(rows)) == 2 and set(rows) <= {tuple(r) for r in tokens[i]}
    other = _some_captions(train, 2, seed=1, epoch=1)["tokens"]
    assert not np.array_equal(other, a["tokens"])
    assert _some_captions(train, 5, seed=1, epoch=0) is train


# The defaults caption_scene_size=48 and caption_train_captions=2 apply here too.
TINY = dict(caption_data="tiny", epochs=2, batch_size=8, attention_reg=["1"], caption_units=16,
            caption_embedding=8, caption_attention_units=8, caption_channels=["4", "4", "8"],
            beam_size=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from experiments import caption_attention

    model_dir = str(tmp_path_factory.mktemp("caption") / "run")
    results = caption_attention.EXPERIMENT.run_local(model_dir, quick=True, **TINY)
    return model_dir, results


def _trained_weights(model_dir):
    """{sub-run: [weight arrays]} of every captioner a run saved."""
    out = {}
    for root, _, names in sorted(os.walk(os.path.join(model_dir, "train"))):
        if "captioner.keras" in names:
            model = keras.saving.load_model(os.path.join(root, "captioner.keras"))
            out[os.path.relpath(root, model_dir)] = [np.asarray(w) for w in model.weights]
    return out


@pytest.mark.slow
def test_same_seed_gives_bit_identical_bleu_and_weights(tiny_run, tmp_path):
    """Two runs with the same flags and seed (dropout on, references subsampled per epoch,
    scenes resized) give the same BLEU, claims and weights, bit for bit (CPU)."""
    from experiments import caption_attention

    model_dir, first = tiny_run
    again = caption_attention.EXPERIMENT.run_local(str(tmp_path / "again"), quick=True, **TINY)
    timeless = lambda metrics: {k: v for k, v in metrics.items()  # noqa: E731
                                if not k.endswith("seconds")}
    assert timeless(again["metrics"]) == timeless(first["metrics"])
    assert again["data"]["bleu"] == first["data"]["bleu"]
    assert [c["measured"] for c in again["claims"]] == [c["measured"] for c in first["claims"]]
    before, after = _trained_weights(model_dir), _trained_weights(str(tmp_path / "again"))
    assert sorted(before) == sorted(after) and len(before) == 2
    for key in before:
        for a, b in zip(before[key], after[key], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=key)


@pytest.mark.slow
def test_tiny_end_to_end_run(tiny_run):
    model_dir, results = tiny_run
    assert results["status"] == "completed"
    claims = {c["text"].split(" ")[0]: c for c in results["claims"]}
    assert len(results["claims"]) == 3  # one lambda: no spread claim
    assert {"Attention", "Beam"} <= set(claims)
    bleu = results["data"]["bleu"]
    assert len(bleu) == 2 * 2 * 2  # (attention, baseline) x 2 splits x (greedy, beam)
    for row in bleu:
        for n in range(1, 5):
            assert 0.0 <= float(row[f"BLEU-{n}"].split(" ")[0]) <= 100.0
    assert results["metrics"]["selected_attention_configuration"] == \
        "model=additive,attention_reg=1.0"
    assert results["config"]["caption_scene_size"] == 48  # scenes resized by default
    model = keras.saving.load_model(os.path.join(model_dir, "captioner.keras"))
    assert model.image_size == 48 and model.regions == 36
    for path in ("report.md", "captioner.keras", "plots/attention_maps.png",
                 "plots/bleu_vs_epoch.png"):
        assert os.path.exists(os.path.join(model_dir, path)), path
    report = open(os.path.join(model_dir, "report.md")).read()
    assert "NLTK" in report and "Attention spread" in report and "Sample captions" in report
    events = os.listdir(os.path.join(model_dir, "train", "model=additive,attention_reg=1.0",
                                     "seed_0", "captions"))
    assert any(e.startswith("events") for e in events)


@pytest.mark.slow
def test_predict_captions_a_png_and_rejects_a_bad_image(tiny_run, tmp_path):
    from PIL import Image

    from experiments import caption_attention

    model_dir, _ = tiny_run
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3)).astype("uint8")
                    ).save(image)
    words, out = caption_attention.predict(model_dir, str(image), beam_size=2)
    assert isinstance(words, list) and os.path.exists(out)
    with pytest.raises(caption_attention.ConfigError, match="no such file"):
        caption_attention.predict(model_dir, str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.caption_attention", f"--predict={bad}",
         f"--model_dir={model_dir}"], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("caption_attention:")]
    assert len(lines) == 1 and "bad.png: not a readable image" in lines[0], proc.stderr[-2000:]
