"""Event files hold the expected tags, and a real TensorBoard serves them on 127.0.0.1."""

import os

import pytest

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from tests.experiments.helpers import get_json, hparams_session_groups, poll, tensorboard_server


def _values(acc, tag):
    return [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def _tags(path):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_event_files_hold_the_expected_tags(softmax_run):
    train = _tags(os.path.join(softmax_run, "train"))
    assert {"loss", "accuracy", "learning_rate", "steps_per_second", "examples_per_second",
            "epoch_loss", "epoch_accuracy"} <= set(train.Tags()["tensors"])
    losses = _values(train, "epoch_loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    lr = _values(train, "learning_rate")[0]
    assert abs(lr - 0.5) < 1e-6
    validation = _tags(os.path.join(softmax_run, "validation"))
    accuracy = _values(validation, "epoch_accuracy")
    assert len(accuracy) == 4 and accuracy[-1] > 0.9
    run_level = _tags(softmax_run)
    tags = set(run_level.Tags()["tensors"])
    assert {"config", "claims", "final/validation_accuracy"} <= tags
    assert "_hparams_/session_start_info" in tags


def test_tensorboard_serves_the_run_on_localhost(softmax_run):
    with tensorboard_server(softmax_run) as base:
        tags = poll(lambda: get_json(f"{base}/data/plugin/scalars/tags"),
                    lambda tags: "train" in tags and "validation" in tags) or {}
    assert "loss" in tags.get("train", {}), tags
    assert "epoch_accuracy" in tags.get("validation", {}), tags


def test_hparams_plugin_lists_one_session_per_sweep_configuration(init_gain_run):
    model_dir, results = init_gain_run
    with tensorboard_server(model_dir) as base:
        experiment, groups = hparams_session_groups(
            base, [{"hparam": "activation"}, {"hparam": "init"}, {"hparam": "depth"},
                   {"metric": {"tag": "validation_accuracy"}}], expected_groups=5)
    trained = {(t["activation"], t["init"]) for t in results["data"]["training"]}
    assert len(groups) == len(trained) == 5, groups
    seen = {(g["hparams"]["activation"], g["hparams"]["init"]) for g in groups}
    assert seen == trained
    assert all(g["hparams"]["depth"] == 8 for g in groups)
    # The experiment summary at the run root lists the swept hparams and the final metrics.
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert names == {"activation", "init", "depth"}
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"validation_accuracy", "diverged"} <= metrics
    accuracy = {(g["hparams"]["activation"], g["hparams"]["init"]):
                next(m["value"] for m in g["metricValues"]
                     if m["name"]["tag"] == "validation_accuracy") for g in groups}
    for t in results["data"]["training"]:
        assert accuracy[t["activation"], t["init"]] == pytest.approx(t["validation_accuracy"])
