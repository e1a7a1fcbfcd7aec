"""Bad flags, files and environments: exit code 2 and one clear line, never a traceback."""

import concurrent.futures
import json
import os

from tests.experiments.helpers import run_experiment

MODULE = "experiments.softmax_regression"


def _cases(tmp):
    blocker = os.path.join(tmp, "a_file")
    with open(blocker, "w") as f:
        f.write("not a directory")
    mismatch = os.path.join(tmp, "previous")
    os.makedirs(mismatch)
    with open(os.path.join(mismatch, "config.json"), "w") as f:
        json.dump({"epochs": 99, "seed": 0}, f)
    return {
        "unknown strategy": (["--strategy=bogus"], None, "--strategy"),
        "negative learning rate": (["--learning_rate=-0.1"], None, "learning_rate"),
        "nan learning rate": (["--learning_rate=nan"], None, "learning_rate"),
        "zero epochs": (["--epochs=0"], None, "epochs"),
        "zero batch": (["--batch_size=0"], None, "batch_size"),
        "negative seed": (["--seed=-1"], None, "seed"),
        "non-numeric epochs": (["--epochs=ten"], None, "epochs"),
        "unknown flag": (["--no_such_flag=1"], None, "no_such_flag"),
        "unknown dataset": (["--dataset=imagenet"], None, "--dataset must be one of"),
        "stray argument": (["oops"], None, "unexpected arguments"),
        "batch not divisible by replicas": (
            ["--strategy=mirrored", "--cpu_replicas=2", "--batch_size=33"], None,
            "not divisible by the 2 replicas"),
        "cpu_replicas without mirrored": (
            ["--strategy=one_device", "--cpu_replicas=2"], None, "cpu_replicas"),
        "non-writable model_dir": ([f"--model_dir={blocker}/run"], None, "not writable"),
        "model_dir of another run": (
            [f"--model_dir={mismatch}"], None, "holds a run with other flags"),
        "multi_worker without TF_CONFIG": (["--strategy=multi_worker"], None, "TF_CONFIG"),
        "malformed TF_CONFIG": (
            ["--strategy=multi_worker"], {"TF_CONFIG": "{not json"}, "not valid JSON"),
        "TF_CONFIG index out of range": (
            ["--strategy=multi_worker"],
            {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                      "task": {"type": "worker", "index": 3}})},
            "out of range"),
        "tpu without address": (["--strategy=tpu"], None, "--tpu"),
        "clip_norm zero": (["--clip_norm=0"], None, "clip_norm"),
    }


def test_each_bad_input_exits_2_with_one_line(tmp_path):
    cases = _cases(str(tmp_path))

    def run(item):
        name, (flags, env, expected) = item
        if not any(f.startswith("--model_dir") for f in flags):
            flags = [*flags, f"--model_dir={tmp_path}/never_{len(name)}"]
        return name, expected, run_experiment(MODULE, *flags, env=env, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, cases.items()))
    assert len(outcomes) >= 10
    for name, expected, proc in outcomes:
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (name, proc.stderr[-2000:])  # TF's start-up noise stays off
        assert "error:" in lines[0] and expected in lines[0], (name, lines[0])
        assert not os.path.exists(f"{tmp_path}/never_{len(name)}/results.json"), name
    # A failed run leaves no directory it created behind.
    assert not any(p.name.startswith("never_") for p in tmp_path.iterdir())
    # ...and does not touch the previous run's files.
    with open(tmp_path / "previous" / "config.json") as f:
        assert json.load(f)["epochs"] == 99
