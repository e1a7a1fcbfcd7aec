"""Tests for layers.skipgram: skip-gram logits, negative-sampling loss and the noise sampler."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.skipgram import NegativeSampler, NegativeSamplingLoss, SkipGram, negative_sampling_loss
from tests.layer_testing import run_layer_test

RNG = np.random.default_rng(0)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _np_loss(logits):
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    return -np.log(sigmoid(logits[:, 0])) - np.log(sigmoid(-logits[:, 1:])).sum(-1)


def test_skipgram_contract():
    targets = RNG.integers(0, 10, size=(4,)).astype("int32")
    contexts = RNG.integers(0, 10, size=(4, 3)).astype("int32")
    run_layer_test(
        SkipGram,
        {"vocab_size": 10, "embedding_dim": 5, "context_initializer": "uniform"},
        [targets, contexts],
        (4, 3),
        expected_num_trainable_weights=2,
    )


def test_skipgram_logits_are_target_dot_context():
    layer = SkipGram(12, 4, context_initializer="uniform")
    targets = np.array([[1], [5], [7]])
    contexts = np.array([[2, 3, 4], [5, 0, 11], [6, 6, 1]])
    logits = _np(layer([targets, contexts]))
    w, c = _np(layer.target_embedding), _np(layer.context_embedding)
    np.testing.assert_allclose(logits, np.einsum("bd,bkd->bk", w[targets[:, 0]], c[contexts]),
                               atol=1e-6)
    assert layer.word_vectors is layer.target_embedding
    # word2vec.c initialisation: W ~ U(-0.5/d, 0.5/d), C = 0.
    fresh = SkipGram(12, 4)
    fresh([targets, contexts])
    assert np.abs(_np(fresh.target_embedding)).max() <= 0.5 / 4
    assert not _np(fresh.context_embedding).any()


def test_loss_equals_numpy_formula_and_stays_finite():
    logits = RNG.normal(scale=3.0, size=(6, 5)).astype("float32")
    np.testing.assert_allclose(_np(negative_sampling_loss(logits)), _np_loss(logits), rtol=1e-5)
    labels = np.zeros_like(logits)
    labels[:, 0] = 1.0
    keras_loss = NegativeSamplingLoss()(labels, logits)
    np.testing.assert_allclose(_np(keras_loss), _np_loss(logits).mean(), rtol=1e-5)
    # Saturated logits: the naive -log(sigmoid) overflows to inf, the softplus form does not.
    extreme = np.array([[-200.0, 200.0, -200.0]], "float32")
    np.testing.assert_allclose(_np(negative_sampling_loss(extreme)), [400.0], rtol=1e-6)


def test_sampler_probabilities_are_unigram_to_three_quarters():
    counts = np.array([1000, 300, 50, 10, 0, 1])
    sampler = NegativeSampler(counts, seed=0)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(sampler.probabilities, expected, rtol=1e-12)
    # The 3/4 power flattens the unigram distribution: rare words gain, frequent ones lose.
    unigram = counts / counts.sum()
    assert expected[0] < unigram[0] and expected[-1] > unigram[-1]


def test_sampler_empirical_frequencies_match():
    counts = np.array([1000, 300, 50, 10, 0, 1])
    sampler = NegativeSampler(counts, seed=1)
    draws = sampler.sample(num_negatives=20, batch_size=10_000)  # 200k draws
    assert draws.shape == (10_000, 20)
    observed = np.bincount(draws.ravel(), minlength=len(counts))
    assert observed[4] == 0  # count 0: never drawn
    n = draws.size
    np.testing.assert_allclose(observed / n, sampler.probabilities, atol=4e-3)
    # Pearson chi-square over the 5 drawable words (4 d.o.f.): 99.9% quantile is 18.47.
    keep = sampler.probabilities > 0
    expected = n * sampler.probabilities[keep]
    chi2 = (((observed[keep] - expected) ** 2) / expected).sum()
    assert chi2 < 18.47, chi2


def test_sampler_excludes_positive_and_renormalises():
    counts = np.array([1000, 300, 50, 10])
    sampler = NegativeSampler(counts, seed=2)
    positives = np.zeros(20_000, dtype=np.int64)  # the most frequent word
    negatives = sampler.sample(num_negatives=5, positives=positives)
    assert not (negatives == positives[:, None]).any()
    observed = np.bincount(negatives.ravel(), minlength=4) / negatives.size
    expected = sampler.probabilities.copy()
    expected[0] = 0.0
    np.testing.assert_allclose(observed, expected / expected.sum(), atol=5e-3)
    with pytest.raises(ValueError):
        NegativeSampler([0, 5], seed=0).sample(2, positives=[1])


def test_one_training_step_raises_positive_scores():
    # Toy corpus: 5 topics of 8 words; a sentence uses words of one topic only.
    rng = np.random.default_rng(3)
    vocab, topics, window = 40, 5, 2
    corpus = np.concatenate([rng.integers(0, 8, size=30) + 8 * (i % topics) for i in range(10)])
    pairs = [(corpus[i], corpus[j]) for i in range(len(corpus))
             for j in range(max(0, i - window), min(len(corpus), i + window + 1)) if j != i]
    targets = np.array([t for t, _ in pairs])
    positives = np.array([c for _, c in pairs])
    sampler = NegativeSampler(np.bincount(corpus, minlength=vocab), seed=0)
    negatives = sampler.sample(2, positives=positives)
    contexts = np.concatenate([positives[:, None], negatives], axis=1)

    keras.utils.set_random_seed(0)
    layer = SkipGram(vocab, 8, context_initializer="uniform")
    optimizer = keras.optimizers.SGD(0.05)
    before = _np(layer([targets, contexts]))
    with tf.GradientTape() as tape:
        # Summed over pairs, as word2vec.c takes one SGD step per pair.
        loss = keras.ops.sum(negative_sampling_loss(layer([targets, contexts])))
    optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights),
                                  layer.trainable_weights))
    after = _np(layer([targets, contexts]))
    assert after[:, 0].mean() > before[:, 0].mean() + 1e-4
    assert after[:, 1:].mean() < before[:, 1:].mean()
    assert _np_loss(after).mean() < _np_loss(before).mean()
