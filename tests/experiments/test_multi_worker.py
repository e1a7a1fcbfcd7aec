"""MultiWorkerMirroredStrategy with two real worker processes on 127.0.0.1."""

import glob
import json
import os
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from tests.experiments.helpers import REPO, experiment_cmd, free_port, load_results, run_experiment

MODULE = "experiments.softmax_regression"
# digits: 1347 training examples -> 42 global batches of 32 per epoch, 126 steps in all.
FLAGS = ["--strategy=multi_worker", "--epochs=3", "--batch_size=32", "--clip_norm=5",
         "--checkpoint_every_steps=10", "--worker_timeout=120"]


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _start_workers(model_dir, **popen):
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return [subprocess.Popen(experiment_cmd(MODULE, f"--model_dir={model_dir}", *FLAGS),
                             cwd=REPO, env={**env, "TF_CONFIG": _tf_config(ports, i)}, **popen)
            for i in range(2)]


def _run_workers(model_dir):
    workers = _start_workers(model_dir, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _step(path):
    return int(path.rsplit("-", 1)[1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("multi_worker") / "mw")
    _run_workers(model_dir)
    return model_dir


def test_two_workers_train_to_identical_weights(uninterrupted, tmp_path):
    model_dir = uninterrupted
    chief = load_results(model_dir)
    other = load_results(f"{model_dir}/workers/worker_1")
    assert chief["environment"]["strategy"] == "multi_worker"
    assert chief["environment"]["replicas"] == 2 and chief["environment"]["workers"] == 2
    assert chief["metrics"]["weights_sha256"] == other["metrics"]["weights_sha256"]
    history = chief["data"]["history"]
    assert history[-1]["train loss"] < history[0]["train loss"]

    # The same global batches on one device give the same model (up to float noise).
    single = str(tmp_path / "single")
    proc = run_experiment(MODULE, f"--model_dir={single}", "--epochs=3", "--batch_size=32",
                          "--clip_norm=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = load_results(single)["data"]["history"]
    for a, b in zip(history, one):
        assert abs(a["validation accuracy"] - b["validation accuracy"]) < 1e-6
        assert abs(a["train loss"] - b["train loss"]) < 1e-4


def test_workers_killed_one_save_apart_resume_from_their_common_checkpoint(uninterrupted,
                                                                          tmp_path):
    # A job killed between the chief's and worker 1's save of the same step leaves worker 1
    # one checkpoint behind. Resuming each from its own latest would put them on different
    # batches (a hang or a wrong model); they must both resume from the step they share.
    model_dir = str(tmp_path / "killed")
    chief_checkpoints = os.path.join(model_dir, "checkpoints")
    workers = _start_workers(model_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # The chief's checkpoint list (written after the files) names step 50 or later.
    while (_step(tf.train.latest_checkpoint(chief_checkpoints) or "-0") < 50
           and time.time() < deadline and all(w.poll() is None for w in workers)):
        time.sleep(0.01)
    for w in workers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    assert all(w.returncode == -signal.SIGKILL for w in workers), "finished before the kill"
    assert not os.path.exists(os.path.join(model_dir, "results.json"))

    chief_latest = _step(tf.train.latest_checkpoint(chief_checkpoints))
    worker_checkpoints = os.path.join(model_dir, "workers", "worker_1", "checkpoints")
    state = tf.train.get_checkpoint_state(worker_checkpoints)
    saved = list(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
    kept = [(path, at) for path, at in saved if _step(path) < chief_latest]
    for path, _ in set(saved) - set(kept):
        for name in glob.glob(path + ".*"):
            os.remove(name)
    kept, timestamps = [path for path, _ in kept], [at for _, at in kept]
    tf.compat.v1.train.update_checkpoint_state(
        worker_checkpoints, kept[-1], all_model_checkpoint_paths=kept,
        all_model_checkpoint_timestamps=timestamps,
        last_preserved_timestamp=state.last_preserved_timestamp)
    common = _step(kept[-1])
    assert common < chief_latest

    chief_out, _ = _run_workers(model_dir)
    assert f"resuming at step {common}" in chief_out
    resumed = load_results(model_dir)
    assert (resumed["metrics"]["weights_sha256"]
            == load_results(f"{model_dir}/workers/worker_1")["metrics"]["weights_sha256"]
            == load_results(uninterrupted)["metrics"]["weights_sha256"])
    assert resumed["data"]["history"] == load_results(uninterrupted)["data"]["history"]


def test_worker_without_its_peer_fails_fast_with_a_clear_error(tmp_path):
    ports = [free_port(), free_port()]  # nobody listens on the peer's port
    start = time.time()
    proc = run_experiment(MODULE, f"--model_dir={tmp_path}/alone", "--strategy=multi_worker",
                          "--worker_timeout=15", env={"TF_CONFIG": _tf_config(ports, 0)},
                          timeout=180)
    elapsed = time.time() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not reach peer" in proc.stderr.strip().splitlines()[-1]
    assert elapsed < 120
