"""MultiWorkerMirroredStrategy with two real worker processes on 127.0.0.1."""

import json
import subprocess
import time

from tests.experiments.helpers import REPO, experiment_cmd, free_port, load_results, run_experiment

MODULE = "experiments.softmax_regression"


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_two_workers_train_to_identical_weights(tmp_path):
    import os

    ports = [free_port(), free_port()]
    model_dir = str(tmp_path / "mw")
    flags = [f"--model_dir={model_dir}", "--strategy=multi_worker", "--epochs=3",
             "--batch_size=32", "--clip_norm=5", "--worker_timeout=120"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    workers = [subprocess.Popen(experiment_cmd(MODULE, *flags), cwd=REPO, text=True,
                                env={**env, "TF_CONFIG": _tf_config(ports, i)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]

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
