"""Helpers for tests that run experiments as real processes."""

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def experiment_cmd(module, *flags):
    return [sys.executable, "-m", module, *flags]


def run_experiment(module, *flags, env=None, timeout=300):
    """Runs `python -m module flags...` in the repo root; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.pop("TF_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run(experiment_cmd(module, *flags), cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def load_results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
