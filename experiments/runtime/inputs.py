"""Input pipelines that split each *global* batch the same way on 1 or N replicas.

Experiments build datasets of global batches; `distribute` hands replica r of worker w the
slice [(w*L + r)*b, (w*L + r + 1)*b) of every global batch (L local replicas, per-replica
batch b). The union over replicas is exactly the one-device batch, so a run on N replicas
sees the same examples per step as a run on one, and a partial last batch is split too.
"""

import numpy as np
import tensorflow as tf

from experiments.runtime.errors import ConfigError


def epoch_batches(features, labels, batch_size, *, seed=0, epoch=0, shuffle=True,
                  drop_remainder=True):
    """A dataset of global batches for one epoch, in an order fixed by (seed, epoch).

    The order depends only on (seed, epoch), so a run resumed at an epoch boundary sees the
    same batches as an uninterrupted one.

    Args:
        features: Array (or tuple/dict of arrays) with a leading example dimension.
        labels: Array of labels, or None for unsupervised data.
        batch_size: The global batch size.
        seed: The run's seed.
        epoch: The epoch index (changes the shuffle order).
        shuffle: Whether to shuffle.
        drop_remainder: Drop the last partial batch (training) or keep it (evaluation).

    Returns:
        A `tf.data.Dataset` of `(features, labels)` global batches.
    """
    n = len(labels) if labels is not None else len(tf.nest.flatten(features)[0])
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    take = lambda a: np.asarray(a)[order]  # noqa: E731
    data = tf.nest.map_structure(take, features)
    if labels is not None:
        data = (data, take(labels))
    return tf.data.Dataset.from_tensor_slices(data).batch(
        batch_size, drop_remainder=drop_remainder
    )


def check_batch_size(global_batch_size, num_replicas):
    """Raises ConfigError unless the global batch splits evenly across replicas."""
    if global_batch_size % num_replicas:
        raise ConfigError(
            f"--batch_size={global_batch_size} is not divisible by the {num_replicas} "
            "replicas of this strategy"
        )


def passes_through(strategy):
    """Whether `distribute` hands the dataset to the one replica unchanged."""
    return strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy))


def untuned_options():
    """Options that turn tf.data's autotuning off.

    Its model thread re-plans at a period that doubles from 10 ms, and deleting an iterator
    waits out the current period while the consumer is busy: 0.4-4.7 s at the end of a 5 s
    word2vec epoch, the detector's epochs rounded up to 5.1 s (`benchmarks.iterator_teardown`).
    The runtime makes an iterator per epoch and per evaluation. Without autotuning, prefetch
    buffers still grow on demand, and AUTOTUNE parallel maps run min(16, cores) calls.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def distribute(strategy, make_dataset, global_batch_size):
    """Distributes a dataset of global batches over the strategy's replicas.

    Args:
        strategy: A `tf.distribute.Strategy`.
        make_dataset: Zero-argument callable returning a dataset of global batches.
        global_batch_size: The global batch size the dataset was batched with.

    Returns:
        A distributed dataset whose per-replica elements partition each global batch.
    """
    check_batch_size(global_batch_size, strategy.num_replicas_in_sync)
    if passes_through(strategy):
        # One replica: the split is the identity, and tf.distribute's input machinery costs
        # ~100 ms per iterator on a CPU, paid every epoch and every evaluation.
        return make_dataset().prefetch(tf.data.AUTOTUNE).with_options(untuned_options())

    def dataset_fn(ctx):
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        per_replica = global_batch_size // ctx.num_replicas_in_sync
        first = ctx.input_pipeline_id * local

        def split(*batch):
            # tf.data unpacks tuple elements into arguments; any other structure is one.
            batch = batch[0] if len(batch) == 1 else batch

            def piece(r):
                start = (first + r) * per_replica
                return tf.nest.map_structure(lambda t: t[start:start + per_replica], batch)

            return tf.data.Dataset.range(local).map(piece)

        ds = make_dataset()
        options = untuned_options()
        options.deterministic = True
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        return ds.with_options(options).flat_map(split).prefetch(tf.data.AUTOTUNE)

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
