"""A run's record: results, report, determinism, resume after SIGKILL, no retraining."""

import os
import signal
import subprocess
import time

import tensorflow as tf

from tests.experiments.helpers import REPO, experiment_cmd, load_results, run_experiment

MODULE = "experiments.softmax_regression"


def _numbers(results):
    """results.json minus what legitimately differs between identical runs."""
    metrics = {k: v for k, v in results["metrics"].items() if k != "examples_per_second"}
    config = {k: v for k, v in results["config"].items() if k != "model_dir"}
    return metrics, config, results["claims"], results["data"], results["status"]


def test_run_writes_a_complete_record(softmax_run):
    files = set(os.listdir(softmax_run))
    assert {"config.json", "results.json", "report.md", "history.json", "checkpoints",
            "train", "validation"} <= files
    results = load_results(softmax_run)
    assert results["status"] == "completed"
    assert results["environment"]["strategy"] == "one_device"
    assert results["environment"]["replicas"] == 1
    assert {"tensorflow", "keras", "python"} <= set(results["environment"]["versions"])
    assert results["timing"]["seconds"] > 0
    (claim,) = results["claims"]
    assert claim["verdict"] == "confirmed" and claim["measured"] > 0.9
    history = results["data"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train loss"] < history[0]["train loss"]
    report = open(os.path.join(softmax_run, "report.md")).read()
    assert "## Claims (1/1 confirmed)" in report and "✅ confirmed" in report
    assert "--model_dir=" in report and "| epochs | 4 |" in report


def test_same_flags_and_seed_give_identical_numbers(softmax_run, tmp_path):
    other = str(tmp_path / "again")
    proc = run_experiment(MODULE, f"--model_dir={other}", "--epochs=4", "--log_every_steps=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _numbers(load_results(other)) == _numbers(load_results(softmax_run))


def test_finished_run_is_not_retrained(softmax_run):
    before = load_results(softmax_run)
    mtime = os.path.getmtime(os.path.join(softmax_run, "results.json"))
    proc = run_experiment(MODULE, f"--model_dir={softmax_run}", "--epochs=4",
                          "--log_every_steps=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not retraining" in proc.stdout
    assert "epoch 1/4" not in proc.stdout
    assert os.path.getmtime(os.path.join(softmax_run, "results.json")) == mtime
    assert load_results(softmax_run) == before


def test_sigkill_mid_epoch_then_rerun_resumes_to_the_same_weights(tmp_path):
    # digits: 1347 training examples -> 42 steps of 32 per epoch; checkpoints every 10 steps
    # fall mid-epoch, and the run is killed after one of them (not at an epoch end).
    flags = ["--epochs=12", "--batch_size=32", "--checkpoint_every_steps=10",
             "--steps_per_execution=3"]
    reference = str(tmp_path / "uninterrupted")
    proc = run_experiment(MODULE, f"--model_dir={reference}", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = str(tmp_path / "killed")
    child = subprocess.Popen(experiment_cmd(MODULE, f"--model_dir={killed}", *flags), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once the checkpoint list names step 130 (epoch 4, step 4) or later: its index
    # file alone appears before the list is updated, and a kill in between left the latest
    # checkpoint at the epoch end before it.
    directory = os.path.join(killed, "checkpoints")

    def latest_step():
        latest = tf.train.latest_checkpoint(directory)
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    deadline = time.time() + 240
    while latest_step() < 130 and time.time() < deadline and child.poll() is None:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "results.json"))
    assert latest_step() % 42, "the kill should land after a mid-epoch save"

    proc = run_experiment(MODULE, f"--model_dir={killed}", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 1/12" not in proc.stdout  # resumed, not restarted
    resumed, uninterrupted = load_results(killed), load_results(reference)
    assert resumed["metrics"]["weights_sha256"] == uninterrupted["metrics"]["weights_sha256"]
    assert resumed["data"]["history"] == uninterrupted["data"]["history"]
    assert resumed["metrics"]["steps"] == uninterrupted["metrics"]["steps"] == 12 * 42
