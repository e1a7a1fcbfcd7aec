"""Keras optimizers written from the update equations, and learning-rate schedules."""

from optimizers.adam import Adam, AdamL2, AdamW
from optimizers.clipping import clip_by_global_norm_across_replicas
from optimizers.rmsprop import RMSProp
from optimizers.schedules import WarmupCosineDecay
from optimizers.sgd import SGD

__all__ = [
    "SGD", "Adam", "AdamL2", "AdamW", "RMSProp", "WarmupCosineDecay",
    "clip_by_global_norm_across_replicas",
]
