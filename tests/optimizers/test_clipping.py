"""clip_by_global_norm_across_replicas against tf.clip_by_global_norm, on one device and on
a 2-replica MirroredStrategy (the replicas' shares must sum to the clipped summed gradient)."""

import numpy as np
import pytest
import tensorflow as tf

from optimizers.clipping import clip_by_global_norm_across_replicas
from optimizers.sgd import SGD

RNG = np.random.default_rng(0)
# Two replicas' gradients: a dense matrix, a missing gradient, a sparse embedding gradient.
DENSE = [RNG.normal(size=(3, 2)).astype("float32") for _ in range(2)]
SPARSE_ROWS = [np.array([0, 2]), np.array([2, 3])]
SPARSE_VALUES = [RNG.normal(size=(2, 4)).astype("float32") for _ in range(2)]


def _grads(replica):
    sparse = tf.IndexedSlices(
        tf.constant(SPARSE_VALUES[replica]), tf.constant(SPARSE_ROWS[replica]), tf.constant([5, 4])
    )
    return [tf.constant(DENSE[replica]), None, sparse]


def _dense(g):
    return tf.convert_to_tensor(g).numpy()


@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
def test_one_device_equals_tf_clip_by_global_norm(clip_norm):
    grads = _grads(0)
    got = clip_by_global_norm_across_replicas(grads, clip_norm)
    want, _ = tf.clip_by_global_norm(grads, clip_norm)
    assert got[1] is None and isinstance(got[2], tf.IndexedSlices)
    for g, w in ((got[0], want[0]), (got[2], want[2])):
        np.testing.assert_allclose(_dense(g), _dense(w), rtol=1e-6)


@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
def test_two_replicas_sum_to_clipped_sum(mirrored_two_cpus, clip_norm):
    strategy = mirrored_two_cpus

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads = tf.cond(tf.equal(replica, 0), lambda: _flat(_grads(0)),
                            lambda: _flat(_grads(1)))
            dense, values, rows = grads
            clipped = clip_by_global_norm_across_replicas(
                [dense, None, tf.IndexedSlices(values, rows, tf.constant([5, 4]))], clip_norm
            )
            assert clipped[1] is None and isinstance(clipped[2], tf.IndexedSlices)
            return clipped[0], tf.convert_to_tensor(clipped[2])

        per_replica = strategy.run(replica_fn)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in per_replica]

    got = step()
    total = [DENSE[0] + DENSE[1], _dense(_grads(0)[2]) + _dense(_grads(1)[2])]
    want, norm = tf.clip_by_global_norm([tf.constant(t) for t in total], clip_norm)
    assert (float(norm) > clip_norm) == (clip_norm == 0.5)  # one case clips, one does not
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


def _flat(grads):
    return [grads[0], grads[2].values, grads[2].indices]


def test_optimizer_global_clipnorm_uses_it_on_one_device():
    # One step of plain SGD with global_clipnorm moves by exactly lr * clip(g).
    variables = [tf.Variable(np.zeros((3, 2), "float32")), tf.Variable(np.zeros(2, "float32"))]
    grads = [tf.constant(DENSE[0]), tf.constant([3.0, 4.0])]
    SGD(1.0, global_clipnorm=0.5).apply_gradients(zip(grads, variables))
    want, _ = tf.clip_by_global_norm(grads, 0.5)
    for v, w in zip(variables, want):
        np.testing.assert_allclose(v.numpy(), -w.numpy(), rtol=1e-6)
