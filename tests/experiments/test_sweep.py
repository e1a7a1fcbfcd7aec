"""Sweeps: sub-runs per configuration and seed, skipped when finished, divergence recorded;
results.json is strict JSON."""

import json
import math
import os

import pytest

from experiments import softmax_regression
from experiments.runtime import files
from experiments.runtime.sweep import configuration_key


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A softmax_regression Run whose experiment is replaced by a 2 x 2-seed sweep."""
    model_dir = str(tmp_path_factory.mktemp("sweep") / "run")
    calls = []

    def experiment(run):
        def train_point(point):
            calls.append((point.key, point.seed))
            if point.hparams["lr"] > 1:
                return {"status": "diverged", "accuracy": float("nan"), "step": 3}
            return {"accuracy": 0.5 + point.seed / 10, "curve": [0.1, float("inf")]}

        records = run.sweep("grid", [{"lr": 0.1, "act": "relu"}, {"lr": 10.0, "act": "relu"}],
                            train_point, seeds=[0, 1])
        run.data["records"] = records

    main = softmax_regression.EXPERIMENT.main
    softmax_regression.EXPERIMENT.main = experiment
    try:
        first = softmax_regression.EXPERIMENT.run_local(model_dir)
        calls_first = list(calls)
        os.remove(os.path.join(model_dir, "results.json"))
        second = softmax_regression.EXPERIMENT.run_local(model_dir)
    finally:
        softmax_regression.EXPERIMENT.main = main
    return model_dir, first, second, calls_first, calls[len(calls_first):]


def test_each_configuration_and_seed_is_a_sub_run(sweep_run):
    model_dir, first, _, calls, _ = sweep_run
    assert calls == [("lr=0.1,act=relu", 0), ("lr=0.1,act=relu", 1),
                     ("lr=10.0,act=relu", 0), ("lr=10.0,act=relu", 1)]
    records = first["data"]["records"]
    assert [r["status"] for r in records] == ["completed"] * 2 + ["diverged"] * 2
    assert records[1]["metrics"]["accuracy"] == pytest.approx(0.6)
    for record in records:
        assert os.path.exists(os.path.join(record["model_dir"], "sweep_record.json"))
        assert record["model_dir"] == os.path.join(
            model_dir, "grid", record["key"], f"seed_{record['seed']}")


def test_a_rerun_skips_finished_sub_runs(sweep_run):
    _, first, second, _, calls_again = sweep_run
    assert calls_again == []
    assert second["data"]["records"] == first["data"]["records"]


def test_results_json_is_strict_with_reasons_for_non_finite_numbers(sweep_run):
    model_dir, first, _, _, _ = sweep_run
    first = dict(first)
    with open(os.path.join(model_dir, "results.json")) as f:
        text = f.read()

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    loaded = json.loads(text, parse_constant=reject)
    diverged = loaded["data"]["records"][2]["metrics"]
    assert diverged["accuracy"] is None and diverged["accuracy_nonfinite"] == "nan"
    completed = loaded["data"]["records"][0]["metrics"]
    assert completed["curve"] == [0.1, None] and completed["curve_nonfinite"] == {"1": "inf"}
    loaded.pop("timing"), first.pop("timing")
    assert loaded == first


def test_strict_json_helper():
    value = {"a": float("-inf"), "b": [1.0, float("nan")], "c": {"d": 2}}
    assert files.strict(value) == {"a": None, "a_nonfinite": "-inf", "b": [1.0, None],
                                   "b_nonfinite": {"1": "nan"}, "c": {"d": 2}}
    assert not math.isnan(files.strict(float("nan")) or 0.0)


def test_configuration_keys_are_readable_and_safe():
    assert configuration_key({"activation": "tanh", "depth": 20}) == "activation=tanh,depth=20"
    assert "/" not in configuration_key({"path": "a/b"})
