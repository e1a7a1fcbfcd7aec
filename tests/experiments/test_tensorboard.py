"""Event files hold the expected tags, and a real TensorBoard serves them on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
import urllib.request

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
