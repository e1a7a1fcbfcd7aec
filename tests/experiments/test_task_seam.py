"""The runtime's structured-batch seam: dict batches, token-level means, steps per execution,
unknown-size datasets, per-replica metrics and regularisation reported on its own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.runtime import ConfigError, SupervisedTask, Task, Trainer, epoch_batches

VOCAB, STEPS, BATCH = 11, 6, 8
RNG = np.random.default_rng(0)
TOKENS = RNG.integers(1, VOCAB, size=(48, STEPS)).astype("int32")
TARGETS = RNG.integers(1, VOCAB, size=(48, STEPS)).astype("int32")
# Very unequal real lengths: a per-replica mean (or a per-sequence mean) would differ from the
# token-level mean over the global batch.
LENGTHS = np.array([1, 6, 2, 6, 1, 5, 3, 6] * 6)
MASK = (np.arange(STEPS)[None] < LENGTHS[:, None]).astype("float32")


def _sequence_model():
    keras.utils.set_random_seed(4)
    tokens = keras.Input((STEPS,), dtype="int32", name="tokens")
    hidden = keras.layers.Embedding(VOCAB, 8)(tokens)
    hidden = keras.layers.Dense(8, activation="tanh",
                                kernel_regularizer=keras.regularizers.L2(1e-3))(hidden)
    return keras.Model(tokens, keras.layers.Dense(VOCAB)(hidden))


class TokenTask(Task):
    """Per-token cross-entropy over the real tokens of padded sequences (dict batches)."""

    def build_model(self):
        return _sequence_model()

    def build_optimizer(self):
        return keras.optimizers.SGD(0.5)

    def build_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")]

    def compute_loss(self, model, batch, training):
        logits = model(batch["tokens"], training=training)
        per_token = keras.losses.sparse_categorical_crossentropy(
            batch["targets"], logits, from_logits=True)
        mask = batch["mask"]
        return tf.reduce_sum(per_token * mask), tf.reduce_sum(mask), logits

    def update_metrics(self, metrics, batch, outputs):
        for metric in metrics:
            metric.update_state(batch["targets"], outputs, sample_weight=batch["mask"])


def _token_batches(epoch, batch=BATCH):
    return epoch_batches({"tokens": TOKENS, "targets": TARGETS, "mask": MASK}, None, batch,
                         seed=0, epoch=epoch)


def _token_trainer(strategy, **kwargs):
    return Trainer(strategy, TokenTask(), BATCH, verbose=0, **kwargs)


def _numpy_token_loss(model, tokens, targets, mask):
    logits = model(tokens).numpy().astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    return (nll * mask).sum() / mask.sum()


def test_token_level_mean_is_exact_on_one_device_and_two_replicas(two_cpus, mirrored_two_cpus):
    one = _token_trainer(tf.distribute.OneDeviceStrategy(two_cpus[0]))
    expected = _numpy_token_loss(one.model, TOKENS, TARGETS, MASK)
    val = lambda: _token_batches(0)  # noqa: E731
    assert one.evaluate(val)["loss"] == pytest.approx(expected, rel=1e-6)
    two = _token_trainer(mirrored_two_cpus)
    assert two.evaluate(val)["loss"] == pytest.approx(expected, rel=1e-6)

    r1 = one.fit(_token_batches, 3, validation_data=val)
    r2 = two.fit(_token_batches, 3, validation_data=val)
    for a, b in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for h1, h2 in zip(r1.history, r2.history):
        for split in ("train", "validation"):
            assert h1[split].keys() == h2[split].keys()
            for key, value in h1[split].items():
                assert h2[split][key] == pytest.approx(value, abs=1e-5), (split, key)
    # The epoch's training loss is the token-weighted mean of its steps, and the
    # regulariser is reported on its own, in both splits.
    assert r1.history[-1]["validation"]["regularization_loss"] > 0
    assert r1.history[-1]["train"]["regularization_loss"] > 0


def test_metrics_are_summed_per_replica_not_gathered(two_cpus, mirrored_two_cpus):
    two = _token_trainer(mirrored_two_cpus)
    one = _token_trainer(tf.distribute.OneDeviceStrategy(two_cpus[0]))
    results = [t.evaluate(lambda: _token_batches(1)) for t in (one, two)]
    assert results[0]["token_accuracy"] == pytest.approx(results[1]["token_accuracy"], abs=1e-7)
    # Hand count: masked token accuracy of the initial model.
    predictions = one.model(TOKENS).numpy().argmax(-1)
    hand = ((predictions == TARGETS) * MASK).sum() / MASK.sum()
    assert results[0]["token_accuracy"] == pytest.approx(hand, abs=1e-6)
    # Each replica keeps its own sums; reading the metric adds them up.
    variable = two.metrics[0].variables[0].value
    assert variable.synchronization == tf.VariableSynchronization.ON_READ
    assert len(two.strategy.experimental_local_results(variable)) == 2
    # No op in the training step gathers predictions across replicas.
    concrete = two._train_execution.get_concrete_function(
        iter(two.strategy.experimental_distribute_dataset(_token_batches(0))),
        tf.constant(1, tf.int64))
    op_types = {op.type for op in concrete.graph.get_operations()}
    for fn in concrete.graph._functions.values():
        op_types |= {node.op for node in fn.definition.node_def}
    assert "ArgMax" in op_types  # the metric update is in the traced step...
    assert not {t for t in op_types if "Gather" in t and "Collective" in t}  # ...ungathered


def test_steps_per_execution_gives_identical_results():
    runs = []
    for spe in (1, 8, 5):
        trainer = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"),
                                 steps_per_execution=spe)
        result = trainer.fit(_token_batches, 2, validation_data=lambda: _token_batches(0))
        runs.append((trainer, result))
    (t1, r1), *others = runs
    for trainer, result in others:
        for a, b in zip(t1.model.get_weights(), trainer.model.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert result.history == r1.history
        assert result.steps == r1.steps == 12


def test_unknown_cardinality_datasets():
    def unknown(epoch):
        return _token_batches(epoch).filter(lambda batch: True)

    assert int(unknown(0).cardinality()) == tf.data.UNKNOWN_CARDINALITY
    known = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), steps_per_execution=4)
    unsized = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), steps_per_execution=4)
    r_known = known.fit(_token_batches, 2, validation_data=lambda: _token_batches(0))
    r_unsized = unsized.fit(unknown, 2, validation_data=lambda: unknown(0))
    assert r_unsized.steps == r_known.steps == 12
    assert r_unsized.history == r_known.history
    assert r_unsized.history[0]["validation"]["loss"] > 0
    # steps_per_epoch bounds an epoch of an unsized (here endless) dataset.
    capped = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
    result = capped.fit(lambda e: unknown(e).repeat(), 2, steps_per_epoch=4)
    assert result.steps == 8

    empty = lambda *_: _token_batches(0).take(0).filter(lambda b: True)  # noqa: E731
    trainer = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
    with pytest.raises(ConfigError, match="no full global batch"):
        trainer.fit(empty, 1)
    with pytest.raises(ConfigError, match="evaluation split is empty"):
        trainer.evaluate(empty)
    with pytest.raises(ConfigError, match="infinite"):
        trainer.fit(lambda e: _token_batches(e).repeat(), 1)


def test_supervised_task_sample_weights_give_a_weighted_mean():
    x = RNG.normal(size=(16, 3)).astype("float32")
    y = RNG.normal(size=(16, 1)).astype("float32")
    weights = np.r_[np.zeros(8), np.ones(8) * 2].astype("float32")
    task = SupervisedTask(lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]),
                          lambda: keras.optimizers.SGD(0.1),
                          keras.losses.MeanSquaredError(reduction=None))
    trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), task, 16, verbose=0)
    loss = trainer.evaluate(
        lambda: tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16))["loss"]
    per_example = ((trainer.model(x).numpy() - y) ** 2)[:, 0]
    assert loss == pytest.approx((per_example * weights).sum() / weights.sum(), rel=1e-6)


def test_jit_compiled_step_matches_the_plain_step():
    """XLA path: gradients of the sums are scaled after the all-reduce of the weight."""
    plain = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"))
    compiled = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), jit_compile=True)
    r1 = plain.fit(_token_batches, 1)
    r2 = compiled.fit(_token_batches, 1)
    for a, b in zip(plain.model.get_weights(), compiled.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert r2.history[0]["train"]["loss"] == pytest.approx(r1.history[0]["train"]["loss"],
                                                           rel=1e-5)
    assert r2.history[0]["train"]["regularization_loss"] > 0


def test_jit_update_compiles_the_whole_step_and_matches_the_plain_step(mirrored_two_cpus):
    """jit_update: forward, backward and optimizer update in one XLA computation (one
    replica); same weights, loss, regulariser and metrics as the plain step."""
    plain = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), steps_per_execution=2)
    whole = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), jit_compile=True,
                           jit_update=True, steps_per_execution=2)
    assert whole._jit_local_step is not None
    r1 = plain.fit(_token_batches, 2)
    r2 = whole.fit(_token_batches, 2)
    for a, b in zip(plain.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for h1, h2 in zip(r1.history, r2.history):
        for key, value in h1["train"].items():
            assert h2["train"][key] == pytest.approx(value, rel=1e-5), key
    assert int(whole.optimizer.iterations.numpy()) == r1.steps
    # Several replicas: the weight's all-reduce cannot be compiled, so only the
    # forward/backward is (the existing jit_compile path).
    two = _token_trainer(mirrored_two_cpus, jit_compile=True, jit_update=True)
    assert two._jit_local_step is None and two._jit_forward_backward is not None


def test_jit_update_runs_an_execution_as_one_xla_loop_with_the_per_step_results(tmp_path):
    """jit_update with steps_per_execution > 1: the execution's batches are stacked and run as
    one XLA while loop. Same weights, losses and metrics as one XLA launch per step, with
    executions cut at a checkpoint boundary (3) and at the epoch end (6 steps, 4 per call)."""
    results = {}
    for name in ("per_step", "stacked"):
        trainer = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), jit_compile=True,
                                 jit_update=True, steps_per_execution=4,
                                 checkpoint_every_steps=3, model_dir=str(tmp_path / name))
        calls = []
        stacked_execution = trainer._train_stacked_execution
        trainer._train_stacked_execution = lambda it, n: calls.append(int(n)) or (
            stacked_execution(it, n))
        if name == "per_step":
            trainer._jit_local_steps = None  # one XLA launch per step, as before
        results[name] = trainer, trainer.fit(_token_batches, 2), calls
    (plain, r1, calls1), (whole, r2, calls2) = results["per_step"], results["stacked"]
    assert calls1 == [] and sum(calls2) == 12 and max(calls2) == 3, calls2
    _assert_same_training(plain, r1, whole, r2)


def test_tf_data_stacks_full_executions_with_the_per_step_results():
    """jit_update, no checkpoint boundary cutting an execution short: tf.data stacks each
    execution's batches in its background thread (6 steps, 4 per call: the second stack is
    padded). Same weights, losses and metrics as one XLA launch per step, one compiled loop."""
    results = {}
    for name in ("per_step", "prestacked"):
        trainer = _token_trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), jit_compile=True,
                                 jit_update=True, steps_per_execution=4)
        calls = []
        execution = trainer._train_prestacked_execution
        trainer._train_prestacked_execution = lambda it: calls.append(1) or execution(it)
        if name == "per_step":
            trainer._jit_local_steps = None
        results[name] = trainer, trainer.fit(_token_batches, 2), calls
    (plain, r1, calls1), (whole, r2, calls2) = results["per_step"], results["prestacked"]
    assert calls1 == [] and len(calls2) == 4  # 2 executions per epoch
    _assert_same_training(plain, r1, whole, r2)


def _assert_same_training(plain, plain_result, whole, whole_result):
    """Per-step and stacked training agree: weights, per-epoch logs, 12 steps, and one
    compiled loop (short executions are padded to its one static shape)."""
    for a, b in zip(plain.model.get_weights(), whole.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for h1, h2 in zip(plain_result.history, whole_result.history):
        for key, value in h1["train"].items():
            assert h2["train"][key] == pytest.approx(value, rel=1e-6), key
    assert int(whole.optimizer.iterations.numpy()) == plain_result.steps == 12
    (signature,) = [f.structured_input_signature[0]
                    for f in whole._jit_local_steps._list_all_concrete_functions()]
    assert [t.shape.as_list() for t in tf.nest.flatten(signature[0])] == [[4, BATCH, STEPS]] * 3


class ExplodingTask(TokenTask):
    """TokenTask whose loss is multiplied by inf from the 5th optimizer step on."""

    def compute_loss(self, model, batch, training):
        loss_sum, weight, logits = super().compute_loss(model, batch, training)
        iterations = model.optimizer.iterations
        scale = tf.where(iterations >= 4, tf.constant(np.inf), tf.constant(1.0))
        return loss_sum * scale, weight, logits


def test_the_xla_loop_stops_at_the_first_non_finite_loss():
    trainer = Trainer(tf.distribute.OneDeviceStrategy("/cpu:0"), ExplodingTask(), BATCH,
                      verbose=0, jit_compile=True, jit_update=True, steps_per_execution=4)
    result = trainer.fit(_token_batches, 3)
    assert result.status == "diverged"
    assert result.diverged_at_step == result.steps == 5  # steps 1-4 finite, step 5 not


class ScheduledTokenTask(TokenTask):
    """TokenTask with a learning rate that falls with the step: each copy must train at its
    own place in the schedule."""

    def build_optimizer(self):
        return keras.optimizers.SGD(keras.optimizers.schedules.PolynomialDecay(0.5, 12, 0.05))


def _stack(batches):
    return {key: tf.stack([b[key] for b in batches]) for key in batches[0]}


def test_parallel_copies_add_each_copys_change_to_the_model():
    """parallel_copies=2, 2 steps per execution, 6 batches per epoch: each epoch is a round
    of two executions (the model and one copy, both from the same weights, the copy's
    schedule two steps on) and then the third execution alone. Reference: the same XLA loop
    run one after the other from the same start, the changes summed in NumPy."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    trainer = Trainer(strategy, ScheduledTokenTask(), BATCH, verbose=0, jit_compile=True,
                      jit_update=True, steps_per_execution=2, parallel_copies=2)
    rounds = []
    end_round = trainer._end_round
    trainer._end_round = lambda copies: rounds.append(copies) or end_round(copies)
    result = trainer.fit(_token_batches, 2)
    assert rounds == [1, 1] and result.steps == 12

    ref = Trainer(strategy, ScheduledTokenTask(), BATCH, verbose=0, jit_compile=True,
                  jit_update=True, steps_per_execution=2)
    for epoch in range(2):
        for metric in ref.metrics:
            metric.reset_state()
        batches = list(_token_batches(epoch))
        stacks = [_stack(batches[i:i + 2]) for i in (0, 2, 4)]
        start, step = ref.model.get_weights(), int(ref.optimizer.iterations.numpy())
        sums = [ref._jit_local_steps(stacks[0], tf.constant(2)).numpy()]
        after_model = ref.model.get_weights()
        ref.model.set_weights(start)
        ref.optimizer.iterations.assign(step + 2)  # the copy's steps 3-4 of the epoch
        sums.append(ref._jit_local_steps(stacks[1], tf.constant(2)).numpy())
        ref.model.set_weights([a + (b - s) for a, b, s in
                               zip(after_model, ref.model.get_weights(), start)])
        assert int(ref.optimizer.iterations.numpy()) == step + 4
        sums.append(ref._jit_local_steps(stacks[2], tf.constant(2)).numpy())
        loss_sum, weight, regularization, steps = np.sum(sums, axis=0)[:4]
        logs = result.history[epoch]["train"]
        assert logs["loss"] == pytest.approx(loss_sum / weight, rel=1e-6)
        assert logs["regularization_loss"] == pytest.approx(regularization / steps, rel=1e-6)
        # The copy's metric sums and counts were added to the model's.
        assert logs["token_accuracy"] == pytest.approx(
            float(ref.metrics[0].result()), rel=1e-6)
    for a, b in zip(trainer.model.get_weights(), ref.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(trainer.optimizer.iterations.numpy()) == 12


def test_parallel_copies_refuse_what_summed_changes_cannot_train():
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")

    class AdamTask(TokenTask):
        def build_optimizer(self):
            return keras.optimizers.Adam()

    class NormalizedTask(TokenTask):
        def build_model(self):
            tokens = keras.Input((STEPS,), dtype="int32", name="tokens")
            hidden = keras.layers.BatchNormalization()(keras.layers.Embedding(VOCAB, 8)(tokens))
            return keras.Model(tokens, keras.layers.Dense(VOCAB)(hidden))

    cases = [(TokenTask(), {}, "needs --jit_compile"),
             (AdamTask(), {"jit_compile": True, "jit_update": True}, "without slots"),
             (NormalizedTask(), {"jit_compile": True, "jit_update": True}, "non-trainable")]
    for task, kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            Trainer(one_device, task, BATCH, verbose=0, parallel_copies=2, **kwargs)
    with pytest.raises(ConfigError, match="parallel_copies must be >= 1"):
        Trainer(one_device, TokenTask(), BATCH, verbose=0, parallel_copies=0)


def test_parallel_copies_resume_as_the_uninterrupted_run(tmp_path):
    """A run stopped after epoch 1 and resumed from its checkpoint ends with the weights of
    the run trained straight through: every round starts from the model's weights."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    def trainer(model_dir):
        return Trainer(strategy, ScheduledTokenTask(), BATCH, verbose=0, jit_compile=True,
                       jit_update=True, steps_per_execution=2, parallel_copies=2,
                       model_dir=str(model_dir))

    straight = trainer(tmp_path / "straight")
    straight.fit(_token_batches, 2)
    trainer(tmp_path / "resumed").fit(_token_batches, 1)
    resumed = trainer(tmp_path / "resumed")
    result = resumed.fit(_token_batches, 2)
    assert result.resumed_from_epoch == 1 and result.steps == 12
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
