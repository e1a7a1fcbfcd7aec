"""Helpers for tests that run experiments as real processes."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

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


@contextlib.contextmanager
def tensorboard_server(logdir):
    """A real `tensorboard` serving `logdir` on 127.0.0.1; yields its base URL."""
    port = free_port()
    binary = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [binary, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def poll(fetch, ready, timeout=90):
    """Calls `fetch()` until `ready(result)` (a server still starting is retried); returns
    the last result."""
    deadline, result = time.time() + timeout, None
    while time.time() < deadline:
        try:
            result = fetch()
            if ready(result):
                break
        except OSError:
            pass
        time.sleep(1)
    return result


def hparams_session_groups(base_url, col_params, expected_groups):
    """The HParams plugin's experiment summary and session groups, once it lists them all."""
    request = {"startIndex": 0, "sliceSize": 1000, "colParams": col_params,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                   "STATUS_RUNNING"]}

    def fetch():
        return (post_json(f"{base_url}/data/plugin/hparams/experiment", {}),
                post_json(f"{base_url}/data/plugin/hparams/session_groups", request)
                .get("sessionGroups", []))

    return poll(fetch, lambda result: len(result[1]) >= expected_groups) or ({}, [])
