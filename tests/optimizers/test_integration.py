"""All optimizers in Keras training: compile + fit + .keras save/load, and tf.distribute.

The distributed test runs the same custom loop (loss averaged over the global batch with
tf.nn.compute_average_loss) under MirroredStrategy on two logical CPUs and under
OneDeviceStrategy; the final weights must agree.
"""

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from optimizers.adam import Adam, AdamL2, AdamW
from optimizers.rmsprop import RMSProp
from optimizers.schedules import WarmupCosineDecay
from optimizers.sgd import SGD

FACTORIES = {
    "sgd_ema": lambda: SGD(0.05, momentum=0.9),
    "sgd_classic_nesterov": lambda: SGD(0.05, momentum=0.9, momentum_form="classic", nesterov=True),
    "rmsprop": lambda: RMSProp(0.01, clipnorm=1.0),
    "adam_schedule": lambda: Adam(WarmupCosineDecay(0.01, warmup_steps=2, total_steps=10)),
    "adamw": lambda: AdamW(0.01, weight_decay=0.1),
    "adam_l2": lambda: AdamL2(0.01, l2=0.01, global_clipnorm=1.0),
}

RNG = np.random.default_rng(3)
X = RNG.normal(size=(16, 4)).astype("float32")
Y = (X @ RNG.normal(size=(4, 1))).astype("float32")


def make_model(seed=0):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_fit_save_load(name, tmp_path):
    model = make_model()
    optimizer = FACTORIES[name]()
    config = optimizer.get_config()
    assert type(optimizer).from_config(copy.deepcopy(config)).get_config() == config
    model.compile(optimizer=optimizer, loss="mse")
    initial_loss = model.evaluate(X, Y, verbose=0)
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    assert model.evaluate(X, Y, verbose=0) < initial_loss
    assert int(optimizer.iterations) == 8

    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is type(optimizer)
    assert restored.optimizer.get_config() == optimizer.get_config()
    for ours, theirs in zip(optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours),
                                      keras.ops.convert_to_numpy(theirs))
    np.testing.assert_allclose(restored.predict(X, verbose=0), model.predict(X, verbose=0),
                               atol=1e-6)


def train_custom_loop(strategy, factory, steps=3, global_batch=8):
    with strategy.scope():
        model = make_model()
        optimizer = factory()
        # Slots must exist before tracing: tf.function cannot create them lazily per replica.
        optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).repeat().batch(global_batch)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def train_step(iterator):
        strategy.run(replica_step, args=next(iterator))

    for _ in range(steps):
        train_step(iterator)
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_mirrored_equals_one_device(name, two_cpus, mirrored_two_cpus):
    mirrored = train_custom_loop(mirrored_two_cpus, FACTORIES[name])
    single = train_custom_loop(tf.distribute.OneDeviceStrategy(two_cpus[0]), FACTORIES[name])
    initial = make_model().get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(single, initial)) > 1e-3  # it trained
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=1e-5)
