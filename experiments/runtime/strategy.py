"""String -> `tf.distribute.Strategy`, validated (after TF Model Garden's distribute_utils).

The same experiment code runs on one CPU, several GPUs (`mirrored`), several machines
(`multi_worker`, configured by the `TF_CONFIG` environment variable) or a TPU.
"""

import json
import os
import sys
import threading

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


def get_strategy(name, *, tpu_address=None):
    """Creates the distribution strategy named `name`.

    Args:
        name: One of auto, one_device, mirrored, multi_worker, tpu.
        tpu_address: TPU name or address, for `tpu`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ConfigError: For an unknown name or an environment that cannot support it.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        parse_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
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


def wait_for_peers(strategy, timeout_s):
    """Runs one all-reduce so that an unreachable peer fails fast instead of hanging.

    A collective that cannot reach its peer blocks inside the TF runtime and cannot be
    cancelled from Python, so a watchdog ends the process with a one-line error.

    Args:
        strategy: The strategy whose workers must all answer.
        timeout_s: Seconds to wait.
    """
    _, task_id, num_workers, _ = worker_info(strategy)
    if num_workers == 1:
        return

    def give_up():
        sys.stderr.write(
            f"multi_worker: error: worker {task_id} could not reach its {num_workers - 1} "
            f"peer(s) within {timeout_s}s; check TF_CONFIG addresses and that every worker "
            "was started\n"
        )
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        total = strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None
        )
        float(total)
    finally:
        watchdog.cancel()
