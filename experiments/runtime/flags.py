"""Flags shared by every experiment, with validators that give one-line errors.

Topic modules define their own flags next to these and may change defaults with
`flags.FLAGS.set_default`; `apply_quick_preset` lets `--quick` shrink a run unless the user
set the flag explicitly.
"""

import math
import sys

from absl import flags

FLAGS = flags.FLAGS

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")

flags.DEFINE_string(
    "model_dir",
    None,
    "Directory for config.json, TensorBoard events (train/, validation/), checkpoints, "
    "results.json and report.md. Default: runs/<experiment>/<UTC timestamp>. Rerunning a "
    "command with the same --model_dir resumes from its latest checkpoint.",
)
flags.DEFINE_enum(
    "strategy",
    "auto",
    STRATEGIES,
    "tf.distribute strategy: auto (mirrored when >1 GPU, else one_device), one_device, "
    "mirrored (all local GPUs, or --cpu_replicas logical CPUs), multi_worker (reads "
    "TF_CONFIG), tpu (--tpu).",
)
flags.DEFINE_integer("seed", 0, "Random seed for weights, data order and dropout.", lower_bound=0)
flags.DEFINE_integer("epochs", 10, "Training epochs per configuration.", lower_bound=1)
flags.DEFINE_integer(
    "batch_size", 64, "Global batch size, split evenly across replicas.", lower_bound=1
)
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_string(
    "dataset", None, "Dataset; each experiment lists its choices (embedded default first)."
)
flags.DEFINE_string("data_dir", None, "TFDS data_dir for --dataset choices loaded through TFDS.")
flags.DEFINE_bool("quick", False, "Small preset that finishes in about 2 minutes on 2 CPU cores.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the forward and backward pass.")
flags.DEFINE_bool(
    "mixed_precision", False, "Compute in bfloat16 with float32 variables (mixed_bfloat16)."
)
flags.DEFINE_bool(
    "deterministic", True, "Enable TF op determinism: same flags + seed, same numbers."
)
flags.DEFINE_float(
    "clip_norm", None, "Clip gradients to this global L2 norm (after the cross-replica sum)."
)
flags.DEFINE_integer(
    "cpu_replicas",
    1,
    "Split the host CPU into this many logical devices, so --strategy=mirrored runs "
    "several replicas without GPUs.",
    lower_bound=1,
)
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu.")
flags.DEFINE_integer(
    "worker_timeout",
    120,
    "Seconds a multi_worker run waits for its peers before failing.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "log_every_steps", 50, "Write training scalars every this many steps.", lower_bound=1
)

flags.DEFINE_integer(
    "steps_per_execution", 1,
    "Training steps run inside one tf.function call (fewer Python round trips for tiny "
    "steps; the numbers are identical).", lower_bound=1)
flags.DEFINE_integer(
    "parallel_copies", 1,
    "With --jit_compile on one device (sparse SGD models such as word2vec): train this many "
    "copies of the model on as many threads, an execution each, and add up their changes "
    "after every round (deterministic Hogwild; see runtime/loop.py).", lower_bound=1)
flags.DEFINE_integer(
    "checkpoint_every_steps", None,
    "Also checkpoint every this many global steps, mid-epoch; a killed run resumes on the "
    "next batch. Default: at epoch ends only.", lower_bound=1)

flags.DEFINE_string(
    "predict", None,
    "Run the trained model in --model_dir on this image and write the picture (experiments "
    "that support it: caption_attention, nms_detection); trains nothing.")
flags.DEFINE_string(
    "predict_out", None, "Where --predict writes its PNG (default: next to the image).")

# Flags whose value does not change a run's numbers: a resumed run may differ in these.
NON_RESULT_FLAGS = frozenset({"model_dir", "worker_timeout", "log_every_steps",
                              "steps_per_execution", "checkpoint_every_steps", "predict",
                              "predict_out"})


@flags.validator("learning_rate", message="--learning_rate must be a finite number > 0")
def _check_learning_rate(value):
    return value is not None and math.isfinite(value) and value > 0


@flags.validator("clip_norm", message="--clip_norm must be a finite number > 0")
def _check_clip_norm(value):
    return value is None or (math.isfinite(value) and value > 0)


@flags.validator("model_dir", message="--model_dir must not be empty")
def _check_model_dir(value):
    return value is None or value.strip() != ""


@flags.multi_flags_validator(
    ["strategy", "tpu"], message="--strategy=tpu needs --tpu=<name or grpc:// address>"
)
def _check_tpu(values):
    return values["strategy"] != "tpu" or bool(values["tpu"])


@flags.multi_flags_validator(
    ["strategy", "cpu_replicas"],
    message="--cpu_replicas > 1 needs --strategy=mirrored (or auto)",
)
def _check_cpu_replicas(values):
    return values["cpu_replicas"] == 1 or values["strategy"] in ("mirrored", "auto")


def declare_datasets(choices):
    """Declares the `--dataset` choices of the experiment being launched.

    Args:
        choices: Dataset names; the first is the embedded, offline default.
    """
    choices = tuple(choices)
    FLAGS.set_default("dataset", choices[0])
    FLAGS["dataset"].help = (
        f"Dataset: one of {', '.join(choices)}. {choices[0]} is embedded (no network)."
    )

    @flags.validator("dataset", message=f"--dataset must be one of: {', '.join(choices)}")
    def _check_dataset(value):
        return value in choices


def apply_quick_preset(**values):
    """Under `--quick`, sets each flag in `values` unless the user passed it explicitly."""
    if not FLAGS.quick:
        return
    for name, value in values.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def experiment_flags(module):
    """The runtime's flags and those the experiment module `module` defines.

    Other topics imported into the same process (tests run several in-process) are left out.
    """
    names = {module.__name__, getattr(module, "__file__", None)}
    if module.__name__ == "__main__":
        names.add(sys.argv[0])  # absl files a __main__ module's flags under sys.argv[0]
    found = []
    for key, module_flags in FLAGS.flags_by_module_dict().items():
        if key == __name__ or key in names:
            found.extend(module_flags)
    return found


def resolved_flags(module, parsed=True, overrides=None):
    """The experiment's flags (runtime + topic) as a JSON-ready dict, sorted by name.

    Args:
        module: The experiment's module.
        parsed: Read parsed values (command line) rather than defaults (in-process runs).
        overrides: Values that replace the flags' (in-process runs); unknown names raise.

    Returns:
        A dict `flag name -> value`.
    """
    values = {f.name: (f.value if parsed else f.default) for f in experiment_flags(module)}
    unknown = set(overrides or {}) - set(values)
    if unknown:
        raise KeyError(f"not flags of this experiment: {', '.join(sorted(unknown))}")
    values.update(overrides or {})
    return dict(sorted(values.items()))
