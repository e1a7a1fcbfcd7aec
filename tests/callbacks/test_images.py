"""Tests for callbacks.images: rendering, the image summaries and the epoch callback."""

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from callbacks.images import ImageCallback, figure_to_image, log_figure, new_figure
from tests.callbacks.tensorboard_events import read_tensors


def _red_figure(width_in=2.0, height_in=1.5, dpi=40):
    figure = new_figure(figsize=(width_in, height_in), dpi=dpi)
    figure.patch.set_facecolor((1.0, 0.0, 0.0))
    return figure


def test_figure_to_image_shape_dtype_and_pixels():
    image = figure_to_image(_red_figure())
    assert image.shape == (1, 60, 80, 4)  # (height, width) = size in inches * dpi
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 30, 40], [255, 0, 0, 255])


def test_figure_to_image_draws_the_plot_and_closes_pyplot_figures():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 2), dpi=30)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    axes.imshow(np.array([[0.0, 1.0]]), cmap="gray", vmin=0, vmax=1, aspect="auto")
    number = figure.number
    image = figure_to_image(figure)
    assert not plt.fignum_exists(number)
    assert image.shape == (1, 60, 60, 4)
    np.testing.assert_array_equal(image[0, 30, 10, :3], [0, 0, 0])  # left half black
    np.testing.assert_array_equal(image[0, 30, 50, :3], [255, 255, 255])  # right half white


def test_log_figure_to_directory_and_writer(tmp_path):
    written = log_figure(tmp_path / "a", "plots/red", _red_figure(), step=7)
    writer = tf.summary.create_file_writer(str(tmp_path / "b"))
    log_figure(writer, "plots/red", _red_figure(), step=3)
    writer.flush()

    for directory, step in (("a", 7), ("b", 3)):
        events = read_tensors(tmp_path / directory)
        [(event_step, value)] = events["plots/red"]
        assert event_step == step
        width, height, png = value  # tf.summary.image stores (width, height, PNG bytes)
        assert (int(width), int(height)) == (80, 60)
        decoded = tf.io.decode_png(png, channels=4).numpy()
        np.testing.assert_array_equal(decoded, written[0])


def test_image_callback_from_fit_every_two_epochs(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    calls = []

    def make_figure(m, epoch):
        calls.append(epoch)
        figure = new_figure(figsize=(1, 1), dpi=20)
        kernel = m.layers[0].kernel.numpy()
        figure.add_subplot().bar(range(3), kernel[:, 0])
        return figure

    x = np.ones((8, 3), "float32")
    model.fit(x, x[:, :1], epochs=4, verbose=0,
              callbacks=[ImageCallback(tmp_path, make_figure, every_n_epochs=2, tag="kernel")])
    assert calls == [1, 3]
    events = read_tensors(tmp_path)
    assert [step for step, _ in events["kernel"]] == [1, 3]
    assert [(int(v[0]), int(v[1])) for _, v in events["kernel"]] == [(20, 20), (20, 20)]


def test_image_callback_from_callback_list(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    callbacks = keras.callbacks.CallbackList(
        [ImageCallback(tmp_path, lambda m, epoch: _red_figure(1, 1, 10))], model=model
    )
    callbacks.on_train_begin()
    for epoch in range(2):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    assert [step for step, _ in read_tensors(tmp_path)["figure"]] == [0, 1]
