"""String -> `tf.distribute.Strategy`, validated (after TF Model Garden's distribute_utils).

The same experiment code runs on one CPU, several GPUs (`mirrored`), several machines
(`multi_worker`, configured by the `TF_CONFIG` environment variable) or a TPU.
"""

import contextlib
import json
import socket
import os
import sys
import threading
import time

import tensorflow as tf

from experiments.runtime.errors import ConfigError


def configure_cpu_replicas(count):
    """Splits the host CPU into `count` logical devices (must run before TF initialises).

    Args:
        count: The number of logical CPU devices wanted.

    Raises:
        ConfigError: If TensorFlow already initialised a different device list.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < count:
            raise ConfigError(
                f"--cpu_replicas={count}: TensorFlow already initialised {have} CPU device(s)"
            ) from None


def parse_tf_config(environ=None):
    """Reads and validates `TF_CONFIG` for a multi-worker run.

    Args:
        environ: Mapping to read from (defaults to `os.environ`).

    Returns:
        The parsed dict, with `cluster` and `task` checked.

    Raises:
        ConfigError: If TF_CONFIG is missing, not JSON, or inconsistent.
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy=multi_worker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError('TF_CONFIG needs a "cluster" object and a "task" object')
    workers = cluster.get("worker", [])
    if not isinstance(workers, list) or not (workers or cluster.get("chief")):
        raise ConfigError('TF_CONFIG "cluster" must list at least one worker address')
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ConfigError(f'TF_CONFIG task type "{task_type}" is not in the cluster')
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(f"TF_CONFIG task index {index!r} is out of range for {task_type}")
    return config


def get_strategy(name, *, tpu_address=None, worker_timeout=120):
    """Creates the distribution strategy named `name`.

    Args:
        name: One of auto, one_device, mirrored, multi_worker, tpu.
        tpu_address: TPU name or address, for `tpu`.
        worker_timeout: Seconds a `multi_worker` run may wait for its peers.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ConfigError: For an unknown name or an environment that cannot support it.
    """
    if name == "multi_worker":
        # Must come before anything that initialises the TF context (even listing devices).
        config = parse_tf_config()
        await_peers(config, worker_timeout)
        with _peer_watchdog(worker_timeout, config):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            # One all-reduce proves every peer answers before any real work starts.
            total = strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
            float(total)
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # CPU replicas share host memory: plain copies beat collectives, and collectives
        # issued from replica context (global-norm clipping) can misorder on CPU devices.
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise ConfigError(f"cannot reach TPU {tpu_address!r}: {e}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"unknown strategy {name!r}; choose one of auto, one_device, mirrored, "
                      "multi_worker, tpu")


def strategy_name(strategy):
    """A short name for logs and results.json."""
    return {
        "OneDeviceStrategy": "one_device",
        "MirroredStrategy": "mirrored",
        "MultiWorkerMirroredStrategy": "multi_worker",
        "CollectiveAllReduceStrategy": "multi_worker",
        "TPUStrategy": "tpu",
    }.get(type(strategy).__name__, type(strategy).__name__)


def worker_info(strategy):
    """Returns `(task_type, task_id, num_workers, is_chief)` for any strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return None, 0, 1, True
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    has_chief = "chief" in cluster
    is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)
    return task_type, task_id, num_workers, is_chief


def _split_address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def await_peers(tf_config, timeout_s):
    """Waits until every peer in TF_CONFIG accepts TCP connections, or raises ConfigError.

    TF blocks without a timeout (and holding the GIL) when it joins a cluster whose peer is
    missing, so the check happens first, in Python. Each worker answers on its own address
    meanwhile; its listener closes just before TF's server takes the port over.

    Args:
        tf_config: The parsed TF_CONFIG.
        timeout_s: Seconds to wait for all peers.

    Raises:
        ConfigError: If a peer is still unreachable after `timeout_s`.
    """
    task = tf_config["task"]
    addresses = [a for kind in ("chief", "worker") for a in tf_config["cluster"].get(kind, [])]
    own = tf_config["cluster"][task["type"]][task["index"]]
    peers = [a for a in addresses if a != own]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", _split_address(own)[1]))
        listener.listen(16)
    except OSError as e:
        listener.close()
        raise ConfigError(f"cannot listen on this worker's address {own}: {e.strerror}") from None
    deadline = time.monotonic() + timeout_s
    waiting = list(peers)
    try:
        while waiting:
            address = waiting[0]
            try:
                with socket.create_connection(_split_address(address), timeout=1.0):
                    waiting.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"{task['type']} {task['index']} could not reach peer {address} within "
                        f"{timeout_s}s; check the TF_CONFIG addresses and that every worker "
                        "was started") from None
                time.sleep(0.2)
    finally:
        listener.close()


@contextlib.contextmanager
def _peer_watchdog(timeout_s, tf_config):
    """Ends the process with a one-line error if the body has not finished in `timeout_s`.

    Joining a cluster whose peer is missing blocks inside the TF runtime, where Python
    cannot cancel it, so the watchdog exits the process (code 2) itself.
    """
    task = tf_config["task"]
    peers = sum(len(v) for v in tf_config["cluster"].values()) - 1

    def give_up():
        sys.stderr.write(
            f"multi_worker: error: {task['type']} {task['index']} could not reach its {peers} "
            f"peer(s) within {timeout_s}s; check the TF_CONFIG addresses and that every "
            "worker was started\n")
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
