"""Gradient clipping that sees the global-batch gradient under tf.distribute.

The Keras base optimizer clips (``clipnorm``, ``global_clipnorm``, ``clipvalue``) before the
TensorFlow backend sums gradients across replicas, so under ``MirroredStrategy`` each replica
clips its own partial gradient ``g_r`` and the update uses ``sum_r clip(g_r)`` instead of
``clip(sum_r g_r)``: the same run on 1 and N replicas then gives different weights whenever a
clip is active. This mixin sums first, clips the global gradient ``g``, and hands each of the
``N`` replicas ``clip(g) / N``, so the backend's own cross-replica sum yields exactly
``clip(g)``. It costs one extra all-reduce, and only when clipping is on and ``N > 1``.

`clip_by_global_norm_across_replicas` is the one global-norm clipping of the suite (the
mixin's ``global_clipnorm`` and custom training loops use it): each replica keeps its own
share ``g_r`` scaled by ``min(1, c / ||sum_r g_r||)``, so the shares sum to
``clip_by_global_norm(sum_r g_r, c)``.
"""

import keras


def _replica_context_with_peers():
    """Returns the tf.distribute replica context when there are several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # TF-only: the cross-replica sum is a tf.distribute feature.

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _divide(gradient, denominator):
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values / denominator, gradient.indices,
                                gradient.dense_shape)
    return gradient / denominator


def _scale(gradient, factor):
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def _squared_norm(gradient):
    """||g||^2 in float32; IndexedSlices' repeated rows (an all-reduce concatenates the
    replicas' rows) are summed first, as the dense gradient would have them."""
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        return tf.reduce_sum(tf.square(tf.cast(values, tf.float32)))
    return tf.reduce_sum(tf.square(tf.cast(gradient, tf.float32)))


def clip_by_global_norm_across_replicas(grads, clip_norm):
    """In a tf.distribute replica context with N>1 replicas: returns per-replica gradients whose cross-replica SUM equals clip_by_global_norm(sum of grads, clip_norm); outside a strategy / 1 replica: plain global-norm clipping. None entries pass through; IndexedSlices supported."""  # noqa: E501
    import tensorflow as tf

    grads = list(grads)
    present = [index for index, gradient in enumerate(grads) if gradient is not None]
    if not present:
        return grads
    context = _replica_context_with_peers()
    if context is None:
        return tf.clip_by_global_norm(grads, clip_norm)[0]
    # The norm is that of the summed (global-batch) gradient: one all-reduce of the gradients.
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    norm = tf.sqrt(tf.add_n([_squared_norm(gradient) for gradient in summed]))
    # tf.clip_by_global_norm's factor: c * min(1/norm, 1/c) (0 gradients stay 0, NaN spreads).
    clip_norm = tf.cast(clip_norm, tf.float32)
    factor = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)
    result = list(grads)
    for index in present:
        result[index] = _scale(grads[index], factor)
    return result


class ClipAfterAllReduceMixin:
    """Put before `keras.optimizers.Optimizer` in the bases to clip the global-batch gradient."""

    def _clip_gradients(self, grads):
        # Keras allows one of clipnorm / global_clipnorm / clipvalue; global_clipnorm goes
        # through the suite's one global-norm clipping, with or without replicas.
        if self.global_clipnorm and self.global_clipnorm > 0 and not (
            self.clipnorm and self.clipnorm > 0
        ):
            return clip_by_global_norm_across_replicas(grads, self.global_clipnorm)
        clipping = any(
            value is not None and value > 0
            for value in (self.clipnorm, self.global_clipnorm, self.clipvalue)
        )
        context = _replica_context_with_peers() if clipping else None
        if context is None:
            return super()._clip_gradients(grads)
        import tensorflow as tf

        present = [index for index, gradient in enumerate(grads) if gradient is not None]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        clipped = super()._clip_gradients(summed)
        result = list(grads)
        for index, gradient in zip(present, clipped):
            result[index] = _divide(gradient, context.num_replicas_in_sync)
        return result
