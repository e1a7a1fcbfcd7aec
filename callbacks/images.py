"""Matplotlib figures as TensorBoard images.

A figure is rendered to PNG in memory (Agg rasteriser), decoded to an RGBA uint8 tensor of
shape (1, H, W, 4) and written with `tf.summary.image`, so plots made during training (weight
distributions, attention maps, detections) appear in TensorBoard's Images tab next to the
scalars of the same run.

Build figures with `matplotlib.figure.Figure()` (or `new_figure`) rather than `pyplot` in
callbacks: a bare `Figure` needs no GUI backend and is not kept alive by pyplot's registry.
"""

import io
import os
import sys
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf


def new_figure(**figure_kwargs):
    """Returns a `matplotlib.figure.Figure` drawn by the Agg backend (no display needed).

    Args:
        **figure_kwargs: Passed to `matplotlib.figure.Figure`, e.g. `figsize=(4, 3)`, `dpi=80`.

    Returns:
        A new figure, not registered with pyplot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**figure_kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_to_image(figure) -> np.ndarray:
    """Renders a matplotlib figure to an RGBA image batch and closes the figure.

    Args:
        figure: A `matplotlib.figure.Figure` (from `new_figure`, `Figure()` or pyplot).

    Returns:
        A uint8 array of shape (1, H, W, 4), H and W being the figure size times its dpi.
    """
    buffer = io.BytesIO()
    # savefig renders PNG with the Agg rasteriser whatever the interactive backend is, so the
    # process-wide backend is left alone (switching it would break a notebook's inline plots).
    figure.savefig(buffer, format="png")
    if "matplotlib.pyplot" in sys.modules:
        # Frees a pyplot-managed figure; a bare Figure is freed with its last reference.
        sys.modules["matplotlib.pyplot"].close(figure)
    image = tf.io.decode_png(buffer.getvalue(), channels=4)
    return np.expand_dims(image.numpy(), axis=0)


def log_figure(writer_or_logdir, tag: str, figure, step: int) -> np.ndarray:
    """Writes a matplotlib figure as a TensorBoard image summary and closes the figure.

    Args:
        writer_or_logdir: A `tf.summary` writer, or a directory (a writer is opened, written,
            flushed and closed there).
        tag: The image's name in TensorBoard, e.g. "predictions".
        figure: The matplotlib figure.
        step: The summary step.

    Returns:
        The (1, H, W, 4) uint8 image that was written.
    """
    image = figure_to_image(figure)
    if isinstance(writer_or_logdir, (str, os.PathLike)):
        writer = tf.summary.create_file_writer(os.fspath(writer_or_logdir))
        with writer.as_default():
            tf.summary.image(tag, image, step=step)
        writer.close()
    else:
        with writer_or_logdir.as_default():
            tf.summary.image(tag, image, step=step)
    return image


class ImageCallback(keras.callbacks.Callback):
    """Draws a figure of the model every N epochs and writes it to TensorBoard.

    Works from `model.fit` and from a custom loop driving `keras.callbacks.CallbackList`.

    Args:
        log_dir: Directory for this callback's own summary writer.
        make_figure: `make_figure(model, epoch) -> matplotlib.figure.Figure`; the figure is
            closed after it is written.
        every_n_epochs: Draw after epochs `every_n_epochs - 1, 2 * every_n_epochs - 1, ...`
            (0-based), written at step = epoch.
        tag: The image's name in TensorBoard.
    """

    def __init__(
        self,
        log_dir: str,
        make_figure: Callable,
        every_n_epochs: int = 1,
        tag: str = "figure",
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.log_dir = str(log_dir)
        self.make_figure = make_figure
        self.every_n_epochs = int(every_n_epochs)
        self.tag = tag
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        log_figure(self._writer, self.tag, self.make_figure(self.model, epoch), step=epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
