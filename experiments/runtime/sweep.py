"""Sweeps: a grid of configurations (x seeds) as resumable sub-runs, one HParams session each.

Every configuration and seed trains in its own directory, `<model_dir>/<name>/<key>[/seed_<s>]`.
A finished sub-run leaves `sweep_record.json` there and is skipped (its record reloaded) when
the sweep runs again, so a killed sweep resumes where it stopped; a sub-run that diverges is
recorded as such and the sweep goes on. TensorBoard's HParams dashboard gets one session per
sub-run, grouped by configuration (so seeds aggregate into one row), with the swept values as
hparams and the sub-run's final numbers as metrics; the hparams config (the experiment
summary that lists them, for every sweep of the run) is written at the run root.
"""

import dataclasses
import json
import math
import os
import re

from experiments.runtime import files
from experiments.runtime import summaries

RECORD_FILE = "sweep_record.json"


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One sub-run of a sweep.

    Attributes:
        key: The configuration's name, e.g. "activation=tanh,init=he" (also its directory).
        hparams: The swept values of this configuration.
        seed: The seed of this sub-run.
        model_dir: The sub-run's directory (created).
    """

    key: str
    hparams: dict
    seed: int
    model_dir: str


def configuration_key(hparams):
    """A readable, filesystem-safe name for a configuration: "a=1,b=relu"."""
    parts = [f"{k}={v}" for k, v in hparams.items()]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts)) or "default"


def _check_hparams(hparams):
    for name, value in hparams.items():
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"sweep hparam {name}={value!r} must be a bool, int, float or str")


def run_sweep(run, name, configurations, train_point, seeds=None):
    """Trains every configuration (x seed) once, skipping sub-runs that already finished.

    Args:
        run: The `Run` (its model_dir, chief status and run-level writer are used).
        name: The sweep's name and the directory under model_dir that holds its sub-runs.
        configurations: Dicts of hparams (bool/int/float/str values), one per configuration.
        train_point: `SweepPoint -> dict` of the sub-run's final numbers (flat; numeric values
            become HParams metrics); a "status" entry ("completed", "diverged", "stopped")
            is kept as the record's status.
        seeds: Seeds to repeat each configuration with; None trains once with the run's seed
            (and no seed directory level).

    Returns:
        Records `{"key", "hparams", "seed", "status", "metrics", "model_dir"}` in sweep order.
    """
    records = []
    for hparams in configurations:
        hparams = dict(hparams)
        _check_hparams(hparams)
        key = configuration_key(hparams)
        for seed in (seeds if seeds is not None else [run.config.seed]):
            parts = [name, key] + ([f"seed_{seed}"] if seeds is not None else [])
            point = SweepPoint(key, hparams, int(seed), run.subdir(*parts))
            records.append(_run_point(run, point, train_point))
    return records


def _run_point(run, point, train_point):
    path = os.path.join(point.model_dir, RECORD_FILE)
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        print(f"--- {point.key} seed {point.seed}: finished earlier ({record['status']}), "
              "skipped", flush=True)
        return record
    print(f"--- {point.key} seed {point.seed}", flush=True)
    outcome = dict(train_point(point))
    status = str(outcome.pop("status", "completed"))
    record = {"key": point.key, "hparams": point.hparams, "seed": point.seed, "status": status,
              "metrics": outcome, "model_dir": point.model_dir}
    if run.is_chief:
        summaries.write_session(point.model_dir, point.hparams, point.key,
                                _session_metrics(record))
    files.write_json(path, record)  # last: its presence marks a finished sub-run
    return files.strict(record)


def _session_metrics(record):
    metrics = {k: float(v) for k, v in record["metrics"].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(float(v))}
    metrics["diverged"] = float(record["status"] == "diverged")
    return metrics


def write_hparams_config(run, records):
    """Writes the HParams experiment summary of `records` (every sweep of the run) at its root."""
    values = {}
    for record in records:
        for name, value in record["hparams"].items():
            values.setdefault(name, [])
            if value not in values[name]:
                values[name].append(value)
    metric_names = sorted({m for r in records for m in _session_metrics(r)})
    summaries.write_hparams_config(run.writer, values, metric_names)
