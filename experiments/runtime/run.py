"""One experiment run: config -> strategy -> model_dir -> ... -> results.json and report.md.

A topic module ends with `EXPERIMENT = Experiment(name, experiment_fn, defaults=..., quick=...)`
and `EXPERIMENT.launch()` under `__main__`. The launcher parses flags (exit 2 with one line on
a bad one), resolves them once into a `Config`, builds a `Run` and hands it to
`experiment_fn(run)`, which reads its settings from `run.config` and does the science through
`run.trainer(...)`, `run.sweep(...)`, `run.claim(...)`, `run.add_table(...)`,
`run.add_figure(...)`; the launcher then writes results.json, report.md and TensorBoard text.
Tests call `EXPERIMENT.run_local(model_dir, quick=True, epochs=1)`: the same path, in-process.
"""

import datetime
import functools
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time

from absl import app
from absl import logging
from absl import flags

from experiments.runtime import files
from experiments.runtime import flags as runtime_flags
from experiments.runtime import inputs
from experiments.runtime.errors import ConfigError

FLAGS = flags.FLAGS

CONFIG_FILE, RESULTS_FILE, REPORT_FILE = "config.json", "results.json", "report.md"


def _ensure_writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--model_dir={path} is not writable: {e.strerror or e}") from None


class Config(dict):
    """The resolved settings of a run (flag name -> value), readable as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r} in this run's config") from None


class Run:
    """The resolved state of one experiment run.

    Args:
        name: The experiment's name (used in the default model_dir and the report).
        config: The resolved settings (a `Config`, or a dict of them).
        command: The command line that reproduces the run, for the report.
    """

    def __init__(self, name, config, command=None):
        import keras
        import tensorflow as tf

        from experiments.runtime import strategy as strategy_lib

        self.name = name
        self.config = config = Config(config)
        self.command = command or f"python -m experiments.{name}"
        self._t0 = time.perf_counter()
        self.claims, self.sections, self.figures, self.metrics, self.data = [], [], [], {}, {}
        self.sweeps = {}
        self.status = "completed"

        if config.cpu_replicas > 1:
            strategy_lib.configure_cpu_replicas(config.cpu_replicas)
        self.strategy = strategy_lib.get_strategy(
            config.strategy, tpu_address=config.tpu, worker_timeout=config.worker_timeout)
        self.strategy_name = strategy_lib.strategy_name(self.strategy)
        self.task_type, self.task_id, self.num_workers, self.is_chief = (
            strategy_lib.worker_info(self.strategy))
        self.num_replicas = self.strategy.num_replicas_in_sync
        inputs.check_batch_size(config.batch_size, self.num_replicas)

        chief_dir = config.model_dir or os.path.join(
            "runs", name, datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"))
        # Non-chief workers must save too (checkpoints are collective) but not over the chief.
        self.model_dir = chief_dir if self.is_chief else os.path.join(
            chief_dir, "workers", f"{self.task_type}_{self.task_id}")
        self._check_previous_config()
        self.created_model_dir = not os.path.exists(self.model_dir)
        _ensure_writable(self.model_dir)
        files.write_json(os.path.join(self.model_dir, CONFIG_FILE), dict(config))

        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.versions = {
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }

    def _check_previous_config(self):
        path = os.path.join(self.model_dir, CONFIG_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            previous = json.load(f)
        changed = [k for k in self.config if k not in runtime_flags.NON_RESULT_FLAGS
                   and k in previous and previous[k] != self.config[k]]
        if changed:
            diffs = ", ".join(f"--{k}={self.config[k]} (was {previous[k]})" for k in changed)
            raise ConfigError(
                f"--model_dir={self.model_dir} holds a run with other flags: {diffs}; "
                "pass a new --model_dir or the same flags to resume")

    @functools.cached_property
    def writer(self):
        """The run-level summary writer (text, hparams, plots) at model_dir."""
        import tensorflow as tf

        return tf.summary.create_file_writer(self.model_dir)

    # ------------------------------------------------------------------ for experiments
    @property
    def previous_results(self):
        """The results.json of a finished earlier attempt in this model_dir, or None."""
        path = os.path.join(self.model_dir, RESULTS_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def subdir(self, *parts):
        """A directory under model_dir for one configuration of a sweep (created)."""
        path = os.path.join(self.model_dir, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def trainer(self, task, *, model_dir=None, **kwargs):
        """A `Trainer` for `task`, wired to this run's strategy, batch size and settings.

        Args:
            task: A `Task` (see experiments/runtime/task.py).
            model_dir: Where this trainer writes (default: the run's model_dir).
            **kwargs: Other `Trainer` arguments (callbacks, verbose, ...), overriding the
                run's clip_norm, jit_compile, steps_per_execution, parallel_copies,
                checkpoint_every_steps, log_every_steps and batch_size.

        Returns:
            A `Trainer`.
        """
        from experiments.runtime.loop import Trainer

        config = self.config
        kwargs.setdefault("clip_norm", config.clip_norm)
        kwargs.setdefault("jit_compile", config.jit_compile)
        kwargs.setdefault("steps_per_execution", config.steps_per_execution)
        kwargs.setdefault("parallel_copies", config.parallel_copies)
        kwargs.setdefault("checkpoint_every_steps", config.checkpoint_every_steps)
        kwargs.setdefault("log_every_steps", config.log_every_steps)
        kwargs.setdefault("global_batch_size", config.batch_size)
        return Trainer(self.strategy, task, model_dir=model_dir or self.model_dir,
                       is_chief=self.is_chief, **kwargs)

    def sweep(self, name, configurations, train_point, seeds=None):
        """Runs `train_point` for every configuration (x seed) as a resumable sub-run.

        See `experiments.runtime.sweep.run_sweep`; the records are also kept in
        `self.sweeps[name]`, and TensorBoard's HParams tab gets one session per sub-run.
        """
        from experiments.runtime.sweep import run_sweep

        records = run_sweep(self, name, configurations, train_point, seeds=seeds)
        self.sweeps[name] = records
        return records

    def claim(self, text, measured, rule, detail=""):
        """Records a claim from the notes with its measured value and pass rule."""
        from experiments.runtime.claims import Claim

        claim = Claim(text, measured, rule, detail)
        self.claims.append(claim)
        return claim

    def add_table(self, heading, rows, columns=None, key=None):
        """Adds a markdown table to the report (and the rows to results.json under `key`)."""
        from experiments.runtime.report import markdown_table

        self.sections.append((heading, markdown_table(rows, columns)))
        if key:
            self.data[key] = rows

    def add_text(self, heading, markdown):
        """Adds a free-text section to the report."""
        self.sections.append((heading, markdown))

    def add_figure(self, name, figure, caption):
        """Saves a matplotlib figure as model_dir/plots/<name>.png, in the report and TensorBoard."""
        import matplotlib

        matplotlib.use("Agg")
        import io

        import matplotlib.pyplot as plt
        import numpy as np
        import tensorflow as tf

        from experiments.runtime import summaries

        path = os.path.join(self.subdir("plots"), f"{name}.png")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
        if self.is_chief:
            image = tf.image.decode_png(buffer.getvalue(), channels=4)
            summaries.write_image(self.writer, f"plots/{name}", np.asarray(image)[None])
        self.figures.append((caption, os.path.join("plots", f"{name}.png")))

    # --------------------------------------------------------------------- finishing
    def results(self):
        return {
            "experiment": self.name,
            "status": self.status,
            "command": self.command,
            "config": self.config,
            "claims": [c.as_dict() for c in self.claims],
            "metrics": self.metrics,
            "data": self.data,
            "timing": {"seconds": time.perf_counter() - self._t0},
            "environment": {
                "strategy": self.strategy_name, "replicas": self.num_replicas,
                "workers": self.num_workers, "task": f"{self.task_type}_{self.task_id}"
                if self.task_type else "local", "versions": self.versions,
            },
        }

    def finish(self):
        """Writes results.json, report.md and TensorBoard text/hparams. Returns the results."""
        from experiments.runtime import report
        from experiments.runtime import summaries
        from experiments.runtime.claims import claims_markdown
        from experiments.runtime.report import markdown_table

        results = self.results()
        if self.is_chief:
            summaries.write_run_text(self.writer, {
                "config": markdown_table([{"flag": k, "value": v}
                                          for k, v in self.config.items()]),
                "claims": claims_markdown(self.claims) if self.claims else "(no claims)",
            })
            if self.sweeps:
                # A sweep's sessions are its sub-runs; the run root holds the one experiment
                # summary (TensorBoard keeps the first it finds) for all of the run's sweeps.
                from experiments.runtime.sweep import write_hparams_config

                write_hparams_config(self, [r for rs in self.sweeps.values() for r in rs])
            else:
                # A single run is one HParams session.
                final = {f"final/{k}": v for k, v in self.metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
                summaries.write_hparams(self.writer, self.config, final)
            self.writer.flush()
        files.write_text(os.path.join(self.model_dir, REPORT_FILE),
                         report.render(results, self.command, self.sections, self.figures))
        # results.json last: its presence marks a complete run.
        files.write_json(os.path.join(self.model_dir, RESULTS_FILE), results)
        return files.strict(results)


def print_summary(results, model_dir):
    """Prints the claims verdicts and where to look."""
    print(f"\n{results['experiment']}: {results['status']}")
    from experiments.runtime.claims import format_measured

    for c in results["claims"]:
        print(f"  [{c['verdict']:9s}] {c['text']}  (measured {format_measured(c['measured'])},"
              f" rule {c['rule']})")
    print(f"report: {os.path.join(model_dir, REPORT_FILE)}")
    print(f"tensorboard --logdir {model_dir} --host 127.0.0.1")


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write(f"{os.path.basename(argv[0])}: error: {e}\n")
        sys.exit(2)


class Experiment:
    """A topic's experiment: its name, science function, defaults and quick preset.

    Args:
        name: The experiment name (`python -m experiments.<name>`).
        main: `run -> None`; does the science through the `Run` API, reading `run.config`.
        defaults: Defaults of shared flags for this topic (e.g. {"epochs": 20}).
        quick: Flag values of the `--quick` preset (flags given explicitly win).
        datasets: The `--dataset` choices; the first is the embedded default.
        predict: Optional `config -> str`: what `--predict=IMAGE` does instead of training
            (run the trained model of `--model_dir` on one image); returns lines to print.
    """

    def __init__(self, name, main, *, defaults=None, quick=None, datasets=None, predict=None):
        self.name = name
        self.main = main
        self.predict = predict
        self.defaults = dict(defaults or {})
        self.quick = dict(quick or {})
        self.datasets = list(datasets or [])
        self.module = sys.modules[main.__module__]

    def config(self, quick=False, **overrides):
        """The settings of an in-process run: flag defaults, topic defaults, preset, overrides."""
        values = {"dataset": self.datasets[0]} if self.datasets else {}
        values.update(self.defaults)
        if quick:
            values.update(self.quick, quick=True)
        values.update(overrides)
        return Config(runtime_flags.resolved_flags(self.module, parsed=False, overrides=values))

    def run_local(self, model_dir, quick=False, **overrides):
        """Runs the experiment in this process (tests); returns the results.json dict."""
        import keras

        config = self.config(quick=quick, model_dir=str(model_dir), **overrides)
        policy = keras.mixed_precision.global_policy()
        try:
            run = Run(self.name, config)
            self.main(run)
            return run.finish()
        finally:
            keras.mixed_precision.set_global_policy(policy)

    def launch(self):
        """Runs the experiment as a command-line program (`if __name__ == "__main__"`)."""
        for name, value in self.defaults.items():
            FLAGS.set_default(name, value)
        if self.datasets:
            runtime_flags.declare_datasets(self.datasets)
        # --help lists the flags of the main module: make the runtime's flags part of it.
        for flag in FLAGS.get_key_flags_for_module(runtime_flags.__name__):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)

        def main(argv):
            if len(argv) > 1:
                sys.stderr.write(
                    f"{self.name}: error: unexpected arguments: {' '.join(argv[1:])}\n")
                sys.exit(2)
            runtime_flags.apply_quick_preset(**self.quick)
            if not FLAGS["verbosity"].present:
                logging.set_verbosity(logging.WARNING)  # TF's INFO chatter hides epoch lines
            command = " ".join([f"python -m experiments.{self.name}"]
                               + [shlex.quote(a) for a in sys.argv[1:]])
            config = Config(runtime_flags.resolved_flags(self.module))
            if config.predict:
                self._predict(config)
                return
            run = None
            try:
                run = Run(self.name, config, command)
                previous = run.previous_results
                if previous and previous.get("status") in ("completed", "diverged"):
                    print(f"{self.name}: {run.model_dir} already holds a finished run; "
                          "not retraining.")
                    print_summary(previous, run.model_dir)
                    return
                self.main(run)
                results = run.finish()
            except ConfigError as e:
                # A run that failed on bad input leaves no directory behind that it created.
                if run is not None and run.created_model_dir:
                    shutil.rmtree(run.model_dir, ignore_errors=True)
                sys.stderr.write(f"{self.name}: error: {e}\n")
                sys.exit(2)
            print_summary(results, run.model_dir)

        app.run(main, flags_parser=_parse_flags)

    def _predict(self, config):
        """`--predict`: the topic's predict function, bad input as one line and exit 2."""
        try:
            if self.predict is None:
                raise ConfigError(f"--predict is not supported by {self.name}")
            if not config.model_dir:
                raise ConfigError("--predict needs --model_dir=<a finished run of "
                                  f"{self.name}>")
            print(self.predict(config))
        except ConfigError as e:
            sys.stderr.write(f"{self.name}: error: {e}\n")
            sys.exit(2)
