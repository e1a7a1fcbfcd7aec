"""Keras callbacks: per-layer statistics, learning rate, matplotlib figures in TensorBoard."""

from callbacks.images import ImageCallback, figure_to_image, log_figure
from callbacks.layer_statistics import LayerStatistics, layer_statistics
from callbacks.learning_rate import LearningRateLogger

__all__ = ["ImageCallback", "LayerStatistics", "LearningRateLogger", "figure_to_image",
           "layer_statistics", "log_figure"]
