"""Event files hold the expected tags, and a real TensorBoard serves them on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from tests.experiments.helpers import free_port


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
    port = free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", softmax_run, "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    tags = json.load(response)
                if "train" in tags and "validation" in tags:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert "loss" in tags.get("train", {}), tags
        assert "epoch_accuracy" in tags.get("validation", {}), tags
    finally:
        server.terminate()
        server.wait(timeout=30)


def _serve(logdir):
    port = free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [tensorboard, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"http://127.0.0.1:{port}"


def _post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_hparams_plugin_lists_one_session_per_sweep_configuration(init_gain_run):
    model_dir, results = init_gain_run
    server, base = _serve(model_dir)
    request = {"startIndex": 0, "sliceSize": 100,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                   "STATUS_RUNNING"],
               "colParams": [{"hparam": "activation"}, {"hparam": "init"},
                             {"hparam": "depth"},
                             {"metric": {"tag": "validation_accuracy"}}]}
    try:
        deadline, groups, experiment = time.time() + 90, [], {}
        while time.time() < deadline:
            try:
                experiment = _post_json(f"{base}/data/plugin/hparams/experiment", {})
                groups = _post_json(f"{base}/data/plugin/hparams/session_groups",
                                    request).get("sessionGroups", [])
                if len(groups) >= 5:
                    break
            except OSError:
                pass
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
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
