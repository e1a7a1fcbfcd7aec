"""Reusable Keras layers and initializers written from the notes' equations.

Importing this package registers every component with Keras serialization, so a saved
`.keras` model that uses them loads with `keras.saving.load_model` (safe_mode on).
"""

from layers.attention import AdditiveAttention, DotProductAttention, SelfAttention
from layers.blocks import InvertedResidual, ResidualBlock
from layers.boxes import box_area, box_convert, pairwise_iou
from layers.initializers import (HeNormal, NaiveUniform, XavierNormal, XavierUniform, Zeros,
                                 gain, get_initializer)
from layers.nms import NonMaxSuppression, batched_non_max_suppression, non_max_suppression
from layers.normalization import BatchNorm
from layers.recurrent import GRUCell, LSTMCell
from layers.skipgram import NegativeSampler, NegativeSamplingLoss, SkipGram, negative_sampling_loss

__all__ = [
    "AdditiveAttention", "BatchNorm", "DotProductAttention", "GRUCell", "HeNormal",
    "InvertedResidual", "LSTMCell", "NaiveUniform", "NegativeSampler", "NegativeSamplingLoss",
    "NonMaxSuppression", "ResidualBlock", "SelfAttention", "SkipGram", "XavierNormal",
    "XavierUniform", "Zeros", "batched_non_max_suppression", "box_area", "box_convert", "gain",
    "get_initializer", "negative_sampling_loss", "non_max_suppression", "pairwise_iou",
]
