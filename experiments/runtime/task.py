"""The seam between a topic and the training loop: what to build, and the loss over a batch.

In the spirit of TF Model Garden's `Task` and orbit's `StandardTrainer`: a topic says how to
build its model, optimizer and metrics and how to turn *its* kind of batch (any nested
structure: dicts of images, padded captions, word pairs and negatives, boxes) into a loss;
the runtime's `Trainer` owns everything else (distribution, steps per execution, clipping,
checkpoints, summaries, callbacks). A topic never copies or subclasses the loop.

The loss contract makes a global-batch mean exact on any number of replicas: each replica
returns `(loss_sum, weight)` for its slice, the runtime all-reduces `weight` and optimises
`sum_r loss_sum_r / sum_r weight_r`. A per-example mean has weight = examples; a per-token
mean over padded captions has weight = real tokens.
"""

import tensorflow as tf


class Task:
    """A topic's model, optimizer, metrics and loss over one replica's batch.

    Subclasses override `build_model`, `build_optimizer` and `compute_loss`; `build_metrics`
    and `update_metrics` are optional.
    """

    def build_model(self):
        """Returns a built Keras model. Called inside `strategy.scope()`."""
        raise NotImplementedError

    def build_optimizer(self):
        """Returns a Keras optimizer. Called inside `strategy.scope()`."""
        raise NotImplementedError

    def build_metrics(self):
        """Returns Keras metrics, created inside `strategy.scope()`.

        Their variables are then sum-aggregated on read across replicas, so updating them
        per replica (`update_metrics`) and reading `result()` gives the global value without
        gathering predictions.
        """
        return []

    def compute_loss(self, model, batch, training):
        """The loss of one replica's slice of a global batch.

        Args:
            model: The model from `build_model`.
            batch: This replica's part of the global batch (any nested structure).
            training: Whether this is a training step.

        Returns:
            `(loss_sum, weight)` or `(loss_sum, weight, outputs)`: the summed loss of the
            slice, the weight it is averaged by (summed over replicas before dividing), and
            anything `update_metrics` needs. Do not add `model.losses`: the runtime adds them
            and reports them as `regularization_loss`.
        """
        raise NotImplementedError

    def update_metrics(self, metrics, batch, outputs):
        """Updates `metrics` from one replica's batch and `compute_loss` outputs."""
        del metrics, batch, outputs  # no metrics unless a task defines them


class SupervisedTask(Task):
    """The `(x, y)` case: a model, an optimizer and a per-example loss `loss_fn(y, pred)`.

    Batches are `(x, y)` or `(x, y, sample_weight)`; the loss is the (weighted) mean over the
    global batch, and metrics get `update_state(y, pred[, sample_weight])`.

    Args:
        model_fn: Zero-argument callable returning a built Keras model.
        optimizer_fn: Zero-argument callable returning a Keras optimizer.
        loss_fn: `(y_true, y_pred) -> per-example losses` of shape (batch,), e.g. a Keras
            loss with `reduction=None`.
        metrics_fn: Optional zero-argument callable returning Keras metrics.
    """

    def __init__(self, model_fn, optimizer_fn, loss_fn, metrics_fn=None):
        self._model_fn = model_fn
        self._optimizer_fn = optimizer_fn
        self._loss_fn = loss_fn
        self._metrics_fn = metrics_fn

    def build_model(self):
        return self._model_fn()

    def build_optimizer(self):
        return self._optimizer_fn()

    def build_metrics(self):
        return list(self._metrics_fn()) if self._metrics_fn else []

    def compute_loss(self, model, batch, training):
        x, y, sample_weight = unpack_supervised(batch)
        pred = model(x, training=training)
        per_example = tf.cast(self._loss_fn(y, pred), tf.float32)
        if sample_weight is None:
            weight = tf.cast(tf.shape(per_example)[0], tf.float32)
            return tf.reduce_sum(per_example), weight, pred
        sample_weight = tf.cast(sample_weight, tf.float32)
        return (tf.reduce_sum(per_example * sample_weight), tf.reduce_sum(sample_weight), pred)

    def update_metrics(self, metrics, batch, outputs):
        _, y, sample_weight = unpack_supervised(batch)
        for metric in metrics:
            metric.update_state(y, outputs, sample_weight=sample_weight)


def unpack_supervised(batch):
    """`(x, y)` or `(x, y, sample_weight)` -> `(x, y, sample_weight or None)`."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("a SupervisedTask batch is (x, y) or (x, y, sample_weight); "
                         f"got {type(batch).__name__}")
    return (*batch, None) if len(batch) == 2 else tuple(batch)
