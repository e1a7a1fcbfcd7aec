"""Gradient clipping that sees the global-batch gradient under tf.distribute.

The Keras base optimizer clips (``clipnorm``, ``global_clipnorm``, ``clipvalue``) before the
TensorFlow backend sums gradients across replicas, so under ``MirroredStrategy`` each replica
clips its own partial gradient ``g_r`` and the update uses ``sum_r clip(g_r)`` instead of
``clip(sum_r g_r)``: the same run on 1 and N replicas then gives different weights whenever a
clip is active. This mixin sums first, clips the global gradient ``g``, and hands each of the
``N`` replicas ``clip(g) / N``, so the backend's own cross-replica sum yields exactly
``clip(g)``. It costs one extra all-reduce, and only when clipping is on and ``N > 1``.
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


class ClipAfterAllReduceMixin:
    """Put before `keras.optimizers.Optimizer` in the bases to clip the global-batch gradient."""

    def _clip_gradients(self, grads):
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
