"""Softmax regression on the embedded digits: the runtime's worked example.

The notes' softmax layer: u = W^T x + b, f(u) = softmax(u), grad_u J = -(1(k = d) - f(u)).
A single linear layer trained with that gradient (cross-entropy) is a convex problem, so it
should reliably reach high accuracy on 8x8 digits.

Command:   python -m experiments.softmax_regression [--quick] [--strategy=mirrored --cpu_replicas=2]
Runtime:   ~15 s on 2 CPU cores (quick: ~8 s)
Expected:  validation accuracy ~0.95; the claim "> 0.9" confirmed.
"""

import keras

from experiments import runtime
from experiments.data import digits



def build_model(num_features=64, num_classes=10):
    """A linear layer with softmax: the notes' softmax layer."""
    return keras.Sequential([
        keras.Input((num_features,)),
        # float32 output under --mixed_precision: the softmax and its loss stay exact.
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="softmax"),
    ])


def train(run):
    """Trains softmax regression with SGD and records the accuracy claim."""
    config = run.config
    (x_train, y_train), (x_val, y_val) = digits.load_digits(seed=0)
    batch = config.batch_size
    trainer = run.trainer(runtime.SupervisedTask(
        build_model,
        lambda: keras.optimizers.SGD(config.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(reduction=None),
        metrics_fn=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    ))
    result = trainer.fit(
        lambda epoch: runtime.epoch_batches(x_train, y_train, batch, seed=config.seed,
                                            epoch=epoch),
        config.epochs,
        validation_data=lambda: runtime.epoch_batches(
            x_val, y_val, batch, shuffle=False, drop_remainder=False),
    )
    run.status = result.status
    final = result.final("validation")
    run.metrics.update({f"validation_{k}": v for k, v in final.items()})
    run.metrics.update({"steps": result.steps, "epochs_completed": result.epochs_completed,
                        "diverged_at_step": result.diverged_at_step,
                        "weights_sha256": runtime.weights_digest(trainer.model),
                        "examples_per_second": result.examples_per_second})
    run.add_table("Training history", [
        {"epoch": h["epoch"], "train loss": h["train"]["loss"],
         "train accuracy": h["train"]["accuracy"],
         "validation loss": h.get("validation", {}).get("loss", float("nan")),
         "validation accuracy": h.get("validation", {}).get("accuracy", float("nan"))}
        for h in result.history], key="history")
    run.claim("Softmax regression (a convex problem) reaches > 90% validation accuracy on digits",
              final.get("accuracy"), "> 0.9", "validation accuracy")


EXPERIMENT = runtime.Experiment(
    "softmax_regression", train, defaults={"epochs": 20, "batch_size": 64, "learning_rate": 0.5},
    quick={"epochs": 8}, datasets=["digits"])

if __name__ == "__main__":
    EXPERIMENT.launch()
