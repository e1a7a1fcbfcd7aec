"""The init-gain experiment: its statistics against NumPy, and a tiny run end to end."""

import json
import os

import numpy as np
import pytest

from experiments import init_gain
from tests.experiments.helpers import load_results, run_experiment


def _numpy_signal(weights, x, y, activation):
    """Forward std and back-propagated dL/dh std per hidden layer, by hand."""
    f = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0),
         "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    df = {"tanh": lambda z, h: 1 - h**2, "relu": lambda z, h: (z > 0).astype(z.dtype),
          "sigmoid": lambda z, h: h * (1 - h)}[activation]
    pairs = list(zip(weights[::2], weights[1::2]))
    h, zs, hs = x.astype(np.float64), [], []
    for w, b in pairs[:-1]:
        z = h @ w + b
        h = f(z)
        zs.append(z)
        hs.append(h)
    w_out, b_out = pairs[-1]
    logits = h @ w_out + b_out
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(p.shape[1])[y]
    grad_h = ((p - onehot) / len(x)) @ w_out.T  # dL/dh of the top hidden layer
    grads = [None] * len(hs)
    for layer in range(len(hs) - 1, -1, -1):
        grads[layer] = grad_h
        grad_z = grad_h * df(zs[layer], hs[layer])
        grad_h = grad_z @ pairs[layer][0].T
    return [h.std() for h in hs], [g.std() for g in grads]


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_signal_statistics_match_numpy(activation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = rng.integers(0, 5, size=64)
    model = init_gain.build_mlp(12, 5, depth=4, width=16, activation=activation,
                                init="xavier_gain", seed=3)
    stats = init_gain.signal_statistics(model, x, y, activation)
    forward, backward = _numpy_signal(model.get_weights(), x, y, activation)
    np.testing.assert_allclose(stats["activation_std"], forward, rtol=1e-4)
    np.testing.assert_allclose(stats["gradient_std"], backward, rtol=1e-3)
    assert len(stats["saturation"]) == 4


def test_each_layer_gets_its_own_weights_and_zero_biases():
    model = init_gain.build_mlp(8, 3, depth=3, width=8, activation="tanh", init="he", seed=0)
    kernels = [w for w in model.get_weights() if w.ndim == 2]
    assert not np.allclose(kernels[1], kernels[2])
    assert all(np.all(b == 0) for b in model.get_weights() if b.ndim == 1)


def test_unit_spread_is_zero_only_for_identical_units():
    model = init_gain.build_mlp(8, 3, depth=2, width=4, activation="tanh", init="zeros", seed=0)
    assert init_gain.unit_spread(model) == 0
    other = init_gain.build_mlp(8, 3, depth=2, width=4, activation="tanh", init="xavier", seed=0)
    assert init_gain.unit_spread(other) > 0.1


def test_tiny_run_end_to_end_in_process(init_gain_run):
    model_dir, results = init_gain_run
    assert results == load_results(model_dir)
    claims = {c["text"]: c for c in results["claims"]}
    assert len(claims) == 8
    assert all(c["verdict"] in ("confirmed", "refuted") for c in claims.values())
    assert all(c["measured"] is not None for c in claims.values())
    # The contrast the experiment exists for: the table gain keeps tanh alive, naive init kills it.
    stable = next(c for t, c in claims.items() if t.startswith("tanh + Xavier"))
    vanishing = next(c for t, c in claims.items() if t.startswith("tanh + naive"))
    assert 0.5 <= stable["measured"] <= 2 and stable["verdict"] == "confirmed"
    assert vanishing["measured"] < 0.05 * stable["measured"]
    he = next(c for t, c in claims.items() if t.startswith("relu + He"))
    assert 0.5 <= he["measured"] <= 2
    symmetry = next(c for t, c in claims.items() if t.startswith("zero init"))
    assert symmetry["measured"] < 1e-5 and symmetry["verdict"] == "confirmed"
    at_init = results["data"]["at_init"]
    assert len(at_init) == 3 * 5
    # relu/he at depth 8 (= deep_depth) is trained only as a deep net, with its two seeds.
    training = {(t["activation"], t["init"]): t for t in results["data"]["training"]}
    assert len(training) == 5 and ("sigmoid", "zeros") in training
    he, xavier = training["relu", "he"], training["relu", "xavier"]
    assert he["seeds"] == xavier["seeds"] == [0, 1] and training["tanh", "naive"]["seeds"] == [0]
    assert he["validation_accuracy"] == pytest.approx(np.mean(he["seed_accuracies"]))
    assert he["accuracy_sd"] == pytest.approx(np.std(he["seed_accuracies"], ddof=1))
    deep_claim = next(c for t, c in claims.items() if t.startswith("8-layer ReLU net trains"))
    assert deep_claim["measured"] == pytest.approx(he["validation_accuracy"])
    gap = next(c for t, c in claims.items() if t.startswith("8-layer ReLU net: Xavier"))
    assert gap["measured"] == pytest.approx(he["validation_accuracy"]
                                            - xavier["validation_accuracy"])
    for seed in (0, 1):
        sub_run = os.path.join(model_dir, "deep", "activation=relu,init=he,depth=8",
                               f"seed_{seed}")
        with open(os.path.join(sub_run, "sweep_record.json")) as f:
            record = json.load(f)
        assert record["metrics"]["validation_accuracy"] == he["seed_accuracies"][seed]
    report = open(os.path.join(model_dir, "report.md")).read()
    assert "## Claims" in report and "plots/std_vs_depth.png" in report
    assert os.path.getsize(os.path.join(model_dir, "plots", "std_vs_depth.png")) > 10_000
    assert os.path.isdir(os.path.join(model_dir, "at_init", "tanh_naive"))
    sub_run = os.path.join(model_dir, "train", "activation=tanh,init=naive,depth=8")
    assert os.path.isdir(os.path.join(sub_run, "layer_statistics"))
    assert os.path.exists(os.path.join(sub_run, "sweep_record.json"))


def test_bad_topic_flags_exit_2(tmp_path):
    proc = run_experiment("experiments.init_gain", "--activations=swish",
                          f"--model_dir={tmp_path}/x")
    assert proc.returncode == 2
    assert "--activations must be among" in proc.stderr.strip().splitlines()[-1]
    proc = run_experiment("experiments.init_gain", "--dataset=mnist",
                          f"--data_dir={tmp_path}/empty", f"--model_dir={tmp_path}/y")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not load --dataset=mnist" in proc.stderr.strip().splitlines()[-1]
    assert not os.path.exists(f"{tmp_path}/y")
