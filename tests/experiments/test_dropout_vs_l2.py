"""dropout_vs_l2: the regularisers and optimizers do what the notes say; a tiny sweep end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import dropout_vs_l2 as dvl
from experiments import runtime
from tests.experiments.helpers import hparams_session_groups, tensorboard_server

X = np.random.default_rng(0).uniform(size=(64, 64)).astype(np.float32)


def _weights_by_kind(model):
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2]
    others = [v for v in model.trainable_variables if len(v.shape) < 2]
    return kernels, others


def test_dropout_inactive_at_inference_and_scaled_by_inverse_keep_in_training():
    plain = dvl.build_mlp(64, 10, [32, 32], seed=3)
    dropped = dvl.build_mlp(64, 10, [32, 32], dropout=0.5, input_dropout=0.2, seed=3)
    assert [type(l).__name__ for l in dropped.layers].count("Dropout") == 3
    for a, b in zip(plain.get_weights(), dropped.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seeds, same initial weights
    np.testing.assert_allclose(dropped(X, training=False), plain(X, training=False), rtol=1e-6)
    assert not np.allclose(dropped(X, training=True), plain(X, training=False))
    for name, p in (("drop_in", 0.2), ("drop_1", 0.5)):
        out = keras.ops.convert_to_numpy(dropped.get_layer(name)(np.ones((200, 50), np.float32),
                                                               training=True))
        assert set(np.unique(np.round(out, 5))) == {0.0, round(1 / (1 - p), 5)}
        assert abs(np.mean(out == 0) - p) < 0.03
        assert abs(out.mean() - 1.0) < 0.05  # inverted dropout keeps the expectation


@pytest.mark.parametrize("l1,l2", [(0.0, 1e-3), (1e-4, 0.0)])
def test_penalty_is_lambda_times_kernel_norm_and_ignores_biases(l1, l2):
    model = dvl.build_mlp(64, 10, [32], l1=l1, l2=l2, seed=1)
    kernels, others = _weights_by_kind(model)
    for v in others:
        v.assign(np.full(v.shape, 5.0, np.float32))  # large biases must not count
    expected = sum(l2 * np.sum(np.square(k.numpy())) + l1 * np.sum(np.abs(k.numpy()))
                   for k in kernels)
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    np.testing.assert_allclose(float(penalty), expected, rtol=1e-5)
    grads = tape.gradient(penalty, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        if len(v.shape) < 2:
            assert g is None or not np.any(g.numpy())
        else:
            assert g is not None and np.any(g.numpy())


def _adam_numpy(theta, grads, lr, beta_1=0.9, beta_2=0.999, eps=1e-8, decay=0.0, l2=0.0):
    """The notes' Adam / AdamW / Adam+L2 in NumPy (float64), bias correction 1 - beta^t."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = g + l2 * theta
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps) - lr * decay * theta
    return theta


def _steps(optimizer, theta, grads):
    variable = keras.Variable(theta.astype(np.float32))
    optimizer.build([variable])
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    return variable.numpy()


def test_adamw_steps_equal_the_notes_formula():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(3)]
    lr, decay_paper = 1e-2, 3e-3
    optimizer = dvl.make_optimizer("adamw", lr, decay_paper)
    # theta <- theta - eta * AdamUpdate - eta * lambda * theta, lambda = Keras weight_decay
    assert optimizer.weight_decay == pytest.approx(decay_paper / lr)
    expected = _adam_numpy(theta, grads, lr, decay=decay_paper / lr)
    np.testing.assert_allclose(_steps(optimizer, theta, grads), expected, rtol=1e-5, atol=1e-6)
    # One step shrinks a parameter with zero gradient history by exactly decay_paper.
    still = _steps(dvl.make_optimizer("adamw", 0.1, decay_paper), np.ones((2, 2)),
                   [np.zeros((2, 2))])
    np.testing.assert_allclose(still, 1 - decay_paper, rtol=1e-6)


def test_adam_l2_steps_equal_adam_on_penalised_gradient():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(4, 6))
    grads = [rng.normal(size=(4, 6)) for _ in range(3)]
    lr, lam = 1e-2, 0.3
    expected = _adam_numpy(theta, grads, lr, l2=lam)
    np.testing.assert_allclose(_steps(dvl.make_optimizer("adam_l2", lr, lam), theta, grads),
                               expected, rtol=1e-5, atol=1e-6)
    # One step of Adam on g + lambda * theta: the suite's Adam fed that gradient by hand.
    g = grads[0] + lam * theta
    np.testing.assert_allclose(_steps(dvl.make_optimizer("adam_l2", lr, lam), theta, grads[:1]),
                               _steps(dvl.make_optimizer("adam", lr), theta, [g]), rtol=1e-6)


def _all_arms():
    configurations, _ = dvl.study_configurations(
        dvl.PARTS, sizes=[100, 300], mid_size=300, dropout_rates=[0.2, 0.5],
        input_dropout=0.2, l2_values=[1e-4, 1e-3], l1=1e-4, learning_rate=1e-3,
        grid_lrs=[1e-3, 1e-2], adamw_decays=[1e-3, 1e-2], adam_l2_decays=[1e-4, 1e-3])
    return configurations


def test_biases_are_never_decayed_or_penalised_in_any_arm():
    arms = _all_arms()
    assert {a["method"] for a in arms} >= {"none", "dropout", "l2", "l1", "dropout+l2",
                                           "early_stopping", "adam_l2", "adamw"}
    seen_decay = set()
    for hp in arms:
        task = dvl.RegularisedTask(
            lambda: dvl.build_mlp(64, 10, [8], dropout=hp["dropout"],
                                  input_dropout=hp["input_dropout"], l1=hp["l1"], l2=hp["l2"]),
            lambda: dvl.make_optimizer(hp["optimizer"], hp["learning_rate"], hp["decay"]))
        model = task.build_model()
        optimizer = task.build_optimizer()
        kernels, others = _weights_by_kind(model)
        assert len(others) == 2 and all(v.name == "bias" for v in others)
        for v in others:
            assert not optimizer._use_weight_decay(v), hp
            v.assign(np.full(v.shape, 0.5, np.float32))
        before = [v.numpy().copy() for v in model.trainable_variables]
        # A step whose data gradient is zero: whatever moves is moved by a regulariser.
        with tf.GradientTape() as tape:
            penalty = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        grads = tape.gradient(penalty, model.trainable_variables)
        grads = [tf.zeros_like(v) if g is None else g for v, g in zip(model.trainable_variables,
                                                                     grads)]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        for v, b in zip(model.trainable_variables, before):
            if len(v.shape) < 2:
                np.testing.assert_array_equal(v.numpy(), b, err_msg=str(hp))
            elif hp["l1"] or hp["l2"] or hp["optimizer"] != "adam":
                # kernels shrink (Adam's first step is ~lr per weight: some cross zero)
                assert np.sum(np.square(v.numpy())) < np.sum(np.square(b)), hp
                assert not np.array_equal(v.numpy(), b), hp
                seen_decay.add(hp["method"])
    assert seen_decay == {"l2", "l1", "dropout+l2", "adam_l2", "adamw"}


def test_early_stopping_restores_the_best_epoch_through_the_runtime(tmp_path):
    # Validation labels are the training labels shifted: the validation loss rises from the
    # first epoch on, so EarlyStopping must stop and restore an early epoch.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(256, 64)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)
    run = runtime.Run("dropout_vs_l2", dvl.EXPERIMENT.config(model_dir=str(tmp_path)))
    task = dvl.RegularisedTask(lambda: dvl.build_mlp(64, 10, [32], seed=0),
                               lambda: dvl.make_optimizer("adam", 1e-2))
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                            restore_best_weights=True)
    trainer = run.trainer(task, model_dir=str(tmp_path / "es"), callbacks=[stopper], verbose=0,
                          global_batch_size=32)
    val = lambda: dvl.eval_batches(x, (y + 1) % 10, 32)  # noqa: E731
    result = trainer.fit(lambda e: dvl.step_batches(x, y, 32, 8, 0, e), 20, validation_data=val)
    losses = [h["validation"]["loss"] for h in result.history]
    best = int(np.argmin(losses))
    assert result.status == "stopped" and len(losses) == best + 1 + 2 < 20
    assert stopper.best_epoch == best
    restored = trainer.evaluate(val)["loss"]
    assert restored == pytest.approx(losses[best], rel=1e-5)
    assert restored < losses[-1] - 1e-3  # not the last epoch's weights


def test_noise_rule_and_slopes():
    diff, two_se, m = dvl.margin([0.10, 0.12, 0.11], [0.05, 0.05, 0.06])
    assert diff == pytest.approx(0.056667, rel=1e-4)
    assert two_se == pytest.approx(2 * np.sqrt(0.01 ** 2 / 3 + 0.005774 ** 2 / 3), rel=1e-3)
    assert m == pytest.approx(diff - two_se)
    assert dvl.slope([1e-3, 1e-2], [1e-4, 1e-5]) == pytest.approx(-1.0)
    assert dvl.slope([1e-3, 1e-2], [1e-4, 1e-4]) == pytest.approx(0.0)
    assert dvl.best_decay({1e-4: (0.9, 0.3), 1e-3: (0.9, 0.2), 1e-2: (0.8, 0.1)}) == 1e-3
    sub = dvl.balanced_subset(np.repeat(np.arange(10), 30), 50, seed=0)
    assert np.bincount(np.repeat(np.arange(10), 30)[sub]).tolist() == [5] * 10
    assert set(dvl.balanced_subset(np.repeat(np.arange(10), 30), 100, 0)) >= set(sub)


TINY = dict(mlp_units=["16"], epochs=3, epoch_steps=10, train_sizes=["50", "100"],
            method_train_size=100, learning_rate=1e-2, grid_learning_rates=["1e-2", "3e-2"],
            seeds_per_config=1,
            adamw_decays=["1e-3"], adam_l2_decays=["1e-4"], es_patience=1,
            log_every_steps=5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("dropout_vs_l2") / "run")
    results = dvl.EXPERIMENT.run_local(model_dir, quick=True, **TINY)
    return model_dir, results


def test_tiny_sweep_end_to_end(tiny_run):
    model_dir, results = tiny_run
    assert results["status"] == "completed"
    # methods: none, dropout 0.5, L2 1e-3, L1, early stopping, Adam+L2, AdamW (7); sizes adds
    # none/dropout at 50 (2); the 2 x 1 x 2 grid adds the two lr=3e-2 points (2). One seed.
    assert results["metrics"]["sub_runs"] == 11 and results["metrics"]["diverged"] == 0
    rows = {r["method"]: r for r in results["data"]["methods"]}
    assert set(rows) == {"none", "dropout 0.5", "L2 0.001", "L1 0.0001", "early stopping",
                         "Adam + L2 0.0001", "AdamW 0.001"}
    mean = lambda cell: float(cell.split(" ± ")[0])  # noqa: E731
    assert mean(rows["L2 0.001"]["kernel L2 norm"]) < mean(rows["none"]["kernel L2 norm"])
    assert (mean(rows["L1 0.0001"]["near-zero fraction"])
            > mean(rows["none"]["near-zero fraction"]))
    for row in rows.values():
        assert 0.5 < mean(row["val acc"]) <= 1.0
        assert 1 <= mean(row["chosen epoch"]) <= 3
    texts = [c["text"] for c in results["claims"]]
    assert len(texts) == 7 and all(c["verdict"] in ("confirmed", "refuted")
                                   for c in results["claims"])
    assert all("2 x SE" in c["detail"] or "restored" in c["detail"] for c in results["claims"])
    assert {r["learning rate"] for r in results["data"]["decay_grid"]} == {1e-2, 3e-2}
    report = open(os.path.join(model_dir, "report.md")).read()
    for name in ("weights", "gap_vs_train_size", "decay_grid"):
        assert os.path.exists(os.path.join(model_dir, "plots", f"{name}.png"))
        assert f"plots/{name}.png" in report
    # Every sub-run is resumable: a rerun in the same directory skips them all.
    with open(os.path.join(model_dir, "train", os.listdir(os.path.join(model_dir, "train"))[0],
                           "seed_0", "sweep_record.json")) as f:
        record = json.load(f)
    assert record["status"] in ("completed", "stopped")
    for key in ("train_accuracy", "validation_accuracy", "test_accuracy", "gap_accuracy",
                "kernel_l2_norm", "near_zero_fraction", "chosen_epoch"):
        assert np.isfinite(record["metrics"][key])


def test_hparams_plugin_lists_one_session_group_per_configuration(tiny_run):
    model_dir, results = tiny_run
    with tensorboard_server(model_dir) as base:
        experiment, groups = hparams_session_groups(
            base, [{"hparam": "method"}, {"hparam": "train_size"}, {"hparam": "learning_rate"},
                   {"hparam": "decay"}, {"metric": {"tag": "gap_accuracy"}}],
            expected_groups=11)
    assert len(groups) == 11, groups
    assert all(len(g["sessions"]) == 1 for g in groups)  # one seed per configuration here
    keys = {(g["hparams"]["method"], g["hparams"]["train_size"], g["hparams"]["learning_rate"])
            for g in groups}
    assert len(keys) == 11
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"method", "train_size", "dropout", "l2", "l1", "optimizer", "learning_rate",
            "decay", "decay_keras", "early_stopping"} <= names
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"gap_accuracy", "test_accuracy", "kernel_l2_norm", "near_zero_fraction",
            "chosen_epoch"} <= metrics
