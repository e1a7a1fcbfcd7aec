"""Per-layer activation and gradient statistics, as a function and as a TensorBoard callback.

For a probe batch x (and optionally targets y and a loss L), each chosen layer l with output
a_l (all elements of the batch pooled) and kernel W_l gets:

    activation_mean = mean(a_l)
    activation_std  = std(a_l)                       (population std, like np.std)
    saturation      = fraction of elements of a_l in the flat region of l's activation:
                        tanh:        |a| > 0.99
                        sigmoid:     a < 0.01 or a > 0.99
                        relu, relu6: a == 0 exactly       ("dead" units)
                      (absent for any other activation)
    gradient_norm   = ||dL/dW_l||_2                  (only when y and a loss are given)

These are the numbers that show vanishing signals (std shrinking layer by layer), saturated
tanh/sigmoid units (saturation near 1, gradients near 0) and dead ReLUs, i.e. what a bad
initialisation gain or learning rate does to a network. The network is evaluated in inference
mode (`training=False`), so dropout is off and batch normalisation uses its moving statistics.

`LayerStatistics` records the same numbers every N optimizer steps as TensorBoard scalars
`layer_statistics/<layer>/<stat>` and histograms `activations/<layer>`, `gradients/<layer>`.
"""

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

_SATURATION_TESTS = {
    "tanh": lambda a: np.abs(a) > 0.99,
    "sigmoid": lambda a: (a < 0.01) | (a > 0.99),
    "relu": lambda a: a == 0,
    "relu6": lambda a: a == 0,
}

_ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)


def activation_name(layer: keras.layers.Layer) -> str | None:
    """Returns the name of the activation a layer applies last, or None if it has none.

    Args:
        layer: A Keras layer. Layers with an `activation` attribute (Dense, Conv*, Activation)
            report that function's name; a default `keras.layers.ReLU` reports "relu".

    Returns:
        The activation's name, e.g. "tanh", "relu", "linear", or None.
    """
    if isinstance(layer, keras.layers.ReLU):
        is_plain = (
            layer.max_value is None
            and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
        )
        return "relu" if is_plain else "relu_variant"
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    if isinstance(fn, str):
        return fn
    return getattr(fn, "__name__", type(fn).__name__)


def _default_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer that has weights or applies an activation, in model order."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and (
            layer.weights
            or activation_name(layer) is not None
            or isinstance(layer, _ACTIVATION_LAYERS)
        )
    ]


def _resolve_layers(
    model: keras.Model, layers: Sequence[str | keras.layers.Layer] | None
) -> list[keras.layers.Layer]:
    if layers is None:
        chosen = _default_layers(model)
    else:
        chosen = [model.get_layer(item) if isinstance(item, str) else item for item in layers]
    if not chosen:
        raise ValueError(f"Model {model.name!r} has no layer to report statistics for.")
    return chosen


class LayerProbe:
    """Runs a model once and returns the outputs of chosen layers and the model's prediction.

    Built once per model (a probe functional model for functional models, a layer-by-layer
    call for Sequential ones) and reused, so a callback does not rebuild it every time.

    Args:
        model: A built Sequential or functional Keras model.
        layers: Layers (or layer names) to report; default: every layer with weights or an
            activation.
    """

    def __init__(
        self, model: keras.Model, layers: Sequence[str | keras.layers.Layer] | None = None
    ):
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built; call it on data or give it an Input first."
            )
        self.model = model
        self.layers = _resolve_layers(model, layers)
        self._probe = None
        if not isinstance(model, keras.Sequential):
            try:
                layer_outputs = [layer.output for layer in self.layers]
            except (AttributeError, ValueError) as error:
                raise ValueError(
                    "layer_statistics needs a Sequential or functional model whose chosen "
                    f"layers are each called once; model {model.name!r}: {error}"
                ) from error
            self._probe = keras.Model(
                model.input, layer_outputs + keras.tree.flatten(model.output)
            )

    def __call__(self, x) -> tuple[list, object]:
        """Returns (outputs of `self.layers` in order, model prediction), in inference mode."""
        if self._probe is None:
            wanted = {id(layer): i for i, layer in enumerate(self.layers)}
            outputs = [None] * len(self.layers)
            h = x
            for layer in self.model.layers:
                h = layer(h, training=False)
                if id(layer) in wanted:
                    outputs[wanted[id(layer)]] = h
            return outputs, h
        flat = self._probe(x, training=False)
        n = len(self.layers)
        prediction = keras.tree.pack_sequence_as(self.model.output, flat[n:])
        return flat[:n], prediction


def _mean_loss(loss_fn: Callable, y, prediction):
    loss = loss_fn(y, prediction)
    return tf.reduce_mean(loss)


def compute_layer_statistics(
    probe: LayerProbe, x, y=None, loss_fn: Callable | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Runs `probe` once and returns (statistics, activations, kernel gradients) per layer name.

    Args:
        probe: A `LayerProbe` for the model.
        x: The probe inputs.
        y: Targets for `loss_fn`; gradients are computed only when both are given.
        loss_fn: A Keras loss (object, function or name) mapping (y_true, y_pred) to a loss.

    Returns:
        Three dicts keyed by layer name: the float statistics, the activations as NumPy arrays
        and the kernel gradients as NumPy arrays (only for layers with a `kernel`).
    """
    want_gradients = y is not None and loss_fn is not None
    kernels = {
        layer.name: layer.kernel
        for layer in probe.layers
        if want_gradients and getattr(layer, "kernel", None) is not None
    }
    with tf.GradientTape() as tape:
        outputs, prediction = probe(x)
        loss = _mean_loss(keras.losses.get(loss_fn), y, prediction) if want_gradients else None
    gradients = {}
    if kernels:
        names = list(kernels)
        grads = tape.gradient(loss, [kernels[name] for name in names])
        gradients = {
            name: np.asarray(grad, dtype=np.float64)
            for name, grad in zip(names, grads)
            if grad is not None
        }

    statistics, activations = {}, {}
    for layer, output in zip(probe.layers, outputs):
        values = np.asarray(keras.ops.convert_to_numpy(output), dtype=np.float64)
        activations[layer.name] = values
        stats = {
            "activation_mean": float(np.mean(values)),
            "activation_std": float(np.std(values)),
        }
        saturated = _SATURATION_TESTS.get(activation_name(layer))
        if saturated is not None:
            stats["saturation"] = float(np.mean(saturated(values)))
        if layer.name in gradients:
            stats["gradient_norm"] = float(np.linalg.norm(gradients[layer.name]))
        statistics[layer.name] = stats
    return statistics, activations, gradients


def layer_statistics(
    model: keras.Model,
    x,
    y=None,
    loss_fn: Callable | str | None = None,
    layers: Sequence[str | keras.layers.Layer] | None = None,
) -> dict[str, dict[str, float]]:
    """Returns activation (and gradient) statistics for each chosen layer on one batch.

    Args:
        model: A built Sequential or functional Keras model.
        x: The probe inputs (one batch).
        y: Targets; with `loss_fn` adds `gradient_norm` for layers that have a kernel.
        loss_fn: A Keras loss (object, function or name), e.g. "mse".
        layers: Layers or layer names to report; default: every layer with weights or an
            activation (Dense, Conv, Activation, ...).

    Returns:
        `{layer_name: {"activation_mean", "activation_std", ["saturation"],
        ["gradient_norm"]}}` with Python floats.
    """
    statistics, _, _ = compute_layer_statistics(LayerProbe(model, layers), x, y, loss_fn)
    return statistics


def histogram_buckets(values, bucket_count: int = 30) -> np.ndarray:
    """TensorBoard's histogram buckets of `values`, computed in NumPy.

    The same (bucket_count, 3) [left edge, right edge, count] float64 tensor that
    `tf.summary.histogram` builds with TF ops (equal-width buckets from min to max, the last
    edge exactly max; all values equal: zero-width buckets, everything in the last; no values:
    all zeros), without the eager one-hot over every element that made each histogram cost
    tens of milliseconds.

    Args:
        values: Array-like of any shape, castable to float64.
        bucket_count: Number of buckets.

    Returns:
        A float64 array of shape (bucket_count, 3).
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        return np.zeros((bucket_count, 3))
    low, high = data.min(), data.max()
    if low == high:
        counts = np.zeros(bucket_count)
        counts[-1] = data.size
        return np.stack([np.full(bucket_count, high), np.full(bucket_count, high), counts], 1)
    width = (high - low) / bucket_count
    index = np.minimum(np.floor((data - low) / width).astype(np.int64), bucket_count - 1)
    counts = np.bincount(index, minlength=bucket_count).astype(np.float64)
    edges = np.linspace(low, high, bucket_count + 1)
    edges[-1] = high
    return np.stack([edges[:-1], edges[1:], counts], 1)


def write_histogram(tag: str, values, step: int, bucket_count: int = 30) -> bool:
    """Writes `values` as a TensorBoard histogram to the default writer (NumPy buckets)."""
    return tf.summary.write(
        tag, tf.constant(histogram_buckets(values, bucket_count)), step=step,
        metadata=histogram_metadata.create_summary_metadata(display_name=None, description=None),
    )


class LayerStatistics(keras.callbacks.Callback):
    """Writes per-layer activation/gradient statistics to TensorBoard every N optimizer steps.

    Works from `model.fit` and from a custom loop driving `keras.callbacks.CallbackList`: the
    step is `model.optimizer.iterations` when the model has an optimizer, else a count of
    training batches. Statistics are written at train begin (the at-initialisation state) and
    whenever the step crosses a multiple of `every_n_steps`.

    Args:
        log_dir: Directory for this callback's own summary writer.
        x: The fixed probe batch.
        y: Targets for the probe batch (enables `gradient_norm` and gradient histograms).
        loss_fn: A Keras loss (object, function or name); default: the model's compiled loss
            when `y` is given and the model was compiled with one.
        every_n_steps: Logging period in optimizer steps.
        layers: Layers or layer names to report; default as in `layer_statistics`.
        histograms: Also write `activations/<layer>` and `gradients/<layer>` histograms.
    """

    def __init__(
        self,
        log_dir: str,
        x,
        y=None,
        loss_fn: Callable | str | None = None,
        every_n_steps: int = 100,
        layers: Sequence[str | keras.layers.Layer] | None = None,
        histograms: bool = True,
    ):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.log_dir = str(log_dir)
        self.x = x
        self.y = y
        self.loss_fn = loss_fn
        self.every_n_steps = int(every_n_steps)
        self.layers = layers
        self.histograms = histograms
        self._writer = None
        self._probe = None
        self._batches_seen = 0
        self._last_logged_step = None

    def _global_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return self._batches_seen
        return int(keras.ops.convert_to_numpy(iterations))

    def _loss(self):
        if self.loss_fn is not None or self.y is None:
            return self.loss_fn
        # A compiled model knows its loss; use it when the user did not pass one.
        return getattr(self.model, "loss", None)

    def log_now(self, step: int) -> dict[str, dict[str, float]]:
        """Computes the statistics and writes them at `step`; returns the statistics."""
        if self._probe is None:
            self._probe = LayerProbe(self.model, self.layers)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        statistics, activations, gradients = compute_layer_statistics(
            self._probe, self.x, self.y, self._loss()
        )
        with self._writer.as_default():
            for name, stats in statistics.items():
                for stat, value in stats.items():
                    tf.summary.scalar(f"layer_statistics/{name}/{stat}", value, step=step)
                if self.histograms:
                    write_histogram(f"activations/{name}", activations[name], step)
                    if name in gradients:
                        write_histogram(f"gradients/{name}", gradients[name], step)
        self._last_logged_step = step
        return statistics

    def on_train_begin(self, logs=None):
        step = self._global_step()
        if step != self._last_logged_step:
            self.log_now(step)

    def on_train_batch_end(self, batch, logs=None):
        self._batches_seen += 1
        step = self._global_step()
        last = self._last_logged_step
        # "Crossed a multiple" rather than "is a multiple": with steps_per_execution > 1 the
        # callback sees only every k-th step.
        if last is None or step // self.every_n_steps > last // self.every_n_steps:
            self.log_now(step)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
