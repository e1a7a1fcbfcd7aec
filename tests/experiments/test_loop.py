"""The shared training loop: strategy equivalence, clipping, regularisation, NaN guard."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.runtime import epoch_batches
from experiments.runtime import inputs
from experiments.runtime.errors import ConfigError
from experiments.runtime.loop import Trainer
from experiments.runtime.task import SupervisedTask
from experiments.runtime.strategy import get_strategy, parse_tf_config

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 8)).astype("float32")
Y = (X @ RNG.normal(size=(8, 3)) > 0).argmax(-1).astype("int32")


def _model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="tanh",
                           kernel_regularizer=keras.regularizers.L2(1e-2)),
        keras.layers.Dense(3, activation="softmax"),
    ])


def _train(strategy, clip_norm=None, epochs=3):
    trainer = Trainer(
        strategy, SupervisedTask(
            _model, lambda: keras.optimizers.Adam(0.05),
            keras.losses.SparseCategoricalCrossentropy(reduction=None),
            metrics_fn=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]),
        global_batch_size=32, clip_norm=clip_norm, verbose=0)
    result = trainer.fit(lambda e: epoch_batches(X, Y, 32, seed=0, epoch=e), epochs,
                         validation_data=lambda: epoch_batches(X[:40], Y[:40], 32, shuffle=False,
                                                               drop_remainder=False))
    return trainer, result


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_mirrored_on_two_cpus_equals_one_device(two_cpus, mirrored_two_cpus, clip_norm):
    one = tf.distribute.OneDeviceStrategy(two_cpus[0])
    mirrored = mirrored_two_cpus
    assert mirrored.num_replicas_in_sync == 2
    t1, r1 = _train(one, clip_norm)
    t2, r2 = _train(mirrored, clip_norm)
    for a, b in zip(t1.model.get_weights(), t2.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for h1, h2 in zip(r1.history, r2.history):
        for split in ("train", "validation"):
            for key, value in h1[split].items():
                assert h2[split][key] == pytest.approx(value, abs=1e-5), (split, key)


def test_one_device_matches_a_hand_written_step():
    """One step of the loop equals mean-loss + L2 gradient descent computed directly."""
    trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), SupervisedTask(
        _model, lambda: keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(reduction=None)),
        global_batch_size=32, verbose=0)
    reference = _model()
    x, y = X[:32], Y[:32]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, reference(x)))
        loss += tf.add_n(reference.losses)
    grads = tape.gradient(loss, reference.trainable_variables)
    expected = [w - 0.1 * g for w, g in zip(reference.trainable_variables, grads)]
    trainer.fit(lambda e: tf.data.Dataset.from_tensors((x, y)), 1)
    for w, e in zip(trainer.model.trainable_variables, expected):
        np.testing.assert_allclose(w.numpy(), e.numpy(), atol=1e-6)


def test_clipping_bounds_the_update():
    trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), SupervisedTask(
        _model, lambda: keras.optimizers.SGD(1.0),
        keras.losses.SparseCategoricalCrossentropy(reduction=None)),
        global_batch_size=32, clip_norm=1e-3, verbose=0)
    before = [w.numpy() for w in trainer.model.trainable_variables]
    trainer.fit(lambda e: tf.data.Dataset.from_tensors((X[:32], Y[:32])), 1)
    after = [w.numpy() for w in trainer.model.trainable_variables]
    step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))
    assert step == pytest.approx(1e-3, rel=1e-3)


def test_nan_guard_stops_and_names_the_step(tmp_path):
    def regression():
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])

    trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), SupervisedTask(
        regression, lambda: keras.optimizers.SGD(1e12),
        keras.losses.MeanSquaredError(reduction=None)), global_batch_size=16,
        model_dir=str(tmp_path), verbose=0)
    y = (X[:, :1] * 1e3).astype("float32")
    result = trainer.fit(lambda e: epoch_batches(X, y, 16, epoch=e), 5)
    assert result.status == "diverged"
    assert 1 <= result.diverged_at_step <= 30
    assert result.steps == result.diverged_at_step
    # No checkpoint holds the non-finite weights.
    assert result.epochs_completed == 0
    assert not tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))


def test_distribute_partitions_every_global_batch(mirrored_two_cpus):
    mirrored = mirrored_two_cpus
    data = np.arange(10, dtype="int64")
    dist = inputs.distribute(
        mirrored, lambda: tf.data.Dataset.from_tensor_slices((data, data)).batch(4), 4)
    seen = []
    for x, _ in dist:
        parts = [t.numpy().tolist() for t in mirrored.experimental_local_results(x)]
        seen.append(parts)
    # Global batches [0..3], [4..7], [8, 9]: replica 0 gets the first half of each.
    assert seen == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], []]]


def test_runtime_iterators_run_without_autotuning(mirrored_two_cpus):
    # Deleting an autotuned iterator waits out its model thread's period (benchmarks.
    # iterator_teardown): the runtime's per-epoch and per-evaluation iterators turn it off.
    data = np.arange(8, dtype="int64")
    make = lambda: tf.data.Dataset.from_tensor_slices(data).batch(4)  # noqa: E731
    assert make().options().autotune.enabled is None  # tf.data's default: on
    one = inputs.distribute(tf.distribute.OneDeviceStrategy("/cpu:0"), make, 4)
    assert one.options().autotune.enabled is False
    mirrored = inputs.distribute(mirrored_two_cpus, make, 4)
    # tf.distribute keeps each worker's dataset in a private attribute.
    assert [d.options().autotune.enabled for d in mirrored._datasets] == [False]


@pytest.mark.parametrize("strategy_name", ["one_device", "mirrored"])
def test_training_scalars_hold_each_logged_step_and_its_learning_rate(tmp_path, request,
                                                                      strategy_name):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    losses = []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0") if strategy_name == "one_device"
                else request.getfixturevalue("mirrored_two_cpus"))
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 9, 0.01)
    trainer = Trainer(strategy, SupervisedTask(
        _model, lambda: keras.optimizers.SGD(schedule),
        keras.losses.SparseCategoricalCrossentropy(reduction=None)),
        global_batch_size=32, model_dir=str(tmp_path), log_every_steps=2, verbose=0,
        callbacks=[Losses()])
    trainer.fit(lambda e: epoch_batches(X, Y, 32, seed=0, epoch=e), 3)
    events = event_accumulator.EventAccumulator(str(tmp_path / "train"),
                                                size_guidance={"tensors": 0})
    events.Reload()

    def scalars(tag):
        return {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
                for e in events.Tensors(tag)}

    # 9 steps, one per execution: logged after steps 2, 4, 6 and 8; each epoch's end (3, 6,
    # 9) writes the learning rate too.
    learning_rates = scalars("learning_rate")
    assert sorted(learning_rates) == [2, 3, 4, 6, 8, 9]
    for step, value in learning_rates.items():
        assert value == pytest.approx(float(schedule(step)), rel=1e-6)
    logged = scalars("loss")
    assert sorted(logged) == [2, 4, 6, 8]
    for step, value in logged.items():
        assert value == pytest.approx(losses[step - 1], rel=1e-6)
    assert all(v > 0 for v in scalars("steps_per_second").values())
    rates = scalars("examples_per_second")
    for step, value in scalars("steps_per_second").items():
        assert rates[step] == pytest.approx(32 * value, rel=1e-5)


def test_strategy_factory(two_cpus):
    assert isinstance(get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    assert isinstance(get_strategy("auto"), tf.distribute.OneDeviceStrategy)  # no GPUs here
    assert get_strategy("mirrored").num_replicas_in_sync == 2  # the two logical CPUs
    with pytest.raises(ConfigError, match="unknown strategy"):
        get_strategy("parameter_server")
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        parse_tf_config({})
    with pytest.raises(ConfigError, match='task type "ps"'):
        parse_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, '
                                      '"task": {"type": "ps", "index": 0}}'})
    good = parse_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                         '"task": {"type": "worker", "index": 1}}'})
    assert good["task"]["index"] == 1
    with pytest.raises(ConfigError, match="not divisible"):
        inputs.check_batch_size(33, 2)


def test_workers_agree_on_the_newest_checkpoint_they_all_hold(tmp_path, monkeypatch):
    """The decision of `Trainer.restore` under multi-worker, with the peer's answers faked:
    the newest step every worker holds is restored; a step some worker lacks is a ConfigError
    on every worker. (Two real workers: tests/experiments/test_multi_worker.py.)"""
    from experiments.runtime import loop

    def trainer():
        return Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), SupervisedTask(
            _model, lambda: keras.optimizers.Adam(0.05),
            keras.losses.SparseCategoricalCrossentropy(reduction=None)),
            global_batch_size=32, model_dir=str(tmp_path), verbose=0)

    trainer().fit(lambda e: epoch_batches(X, Y, 32, seed=0, epoch=e), 2)  # steps 3 and 6
    monkeypatch.setattr(loop, "worker_info", lambda strategy: ("worker", 0, 2, True))

    def peer_answers(latest, holds):
        answers = iter([latest, holds])
        monkeypatch.setattr(loop, "_gather_from_workers",
                            lambda strategy, num_workers, value: [value, next(answers)])

    peer_answers(latest=3, holds=1)  # the peer was killed before its save of step 6
    assert trainer().restore() == (1, 3)
    peer_answers(latest=6, holds=1)
    assert trainer().restore() == (2, 6)
    peer_answers(latest=0, holds=1)  # the peer holds nothing: both start afresh
    assert trainer().restore() == (0, 0)
    peer_answers(latest=1, holds=1)  # step 1 was never saved here
    with pytest.raises(ConfigError, match="share no step"):
        trainer().restore()
