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
    "dropout_vs_l2": (
        "experiments.dropout_vs_l2",
        "Dropout vs L1/L2, early stopping, training-set size, AdamW vs Adam + L2 (seeds).",
    ),
    "word2vec": (
        "experiments.word2vec",
        "Skip-gram with negative sampling on gensim's corpus, side by side with gensim.",
    ),
    "caption_attention": (
        "experiments.caption_attention",
        "Show-Attend-Tell captioning on shape scenes: attention vs none, where it looks.",
    ),
    "nms_detection": (
        "experiments.nms_detection",
        "A detector on shape scenes scored with COCO mAP: no NMS, hard NMS thresholds, soft-NMS.",
    ),
    "softmax_regression": (
        "experiments.softmax_regression",
        "Runtime example: softmax regression on digits, the notes' softmax-layer gradient.",
    ),
}
