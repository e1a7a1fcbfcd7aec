"""Experiments: one absl-flag module per topic, sharing `experiments.runtime`.

`python -m experiments` lists them; `python -m experiments all --quick` runs them all.
"""

import os

# Must be set before TensorFlow is first imported by any experiment.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if not os.environ.get("KF_SKIP_QUIET_IMPORT"):
    from experiments import startup

    startup.import_tensorflow_quietly()

# name -> (module, one-line description). The runtime never imports these; only the CLI does.
EXPERIMENTS = {
    "init_gain": (
        "experiments.init_gain",
        "Initialisation gain: signal std through depth per activation x init; who trains.",
    ),
    "softmax_regression": (
        "experiments.softmax_regression",
        "Runtime example: softmax regression on digits, the notes' softmax-layer gradient.",
    ),
}
