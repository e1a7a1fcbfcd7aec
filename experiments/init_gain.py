"""Initialisation gain: the right gain keeps signals alive through depth; the wrong one doesn't.

Part 1 (at initialisation) pushes one batch through a deep MLP for every (activation, init)
pair and measures, per hidden layer, the std of the forward activations and of the
back-propagated gradient dL/dh. Part 2 trains configurations with one optimizer and schedule
(the suite's SGD with momentum and WarmupCosineDecay) and records whether each trained; the
deep He-vs-Xavier ReLU nets, whose training is chaotic, with `--deep_seeds` seeds each (their
claims use the mean over seeds).

Claims (Glorot & Bengio 2010; He et al. 2015; the notes' gain table):
  tanh + Xavier(gain 5/3) keeps the activation std within 2x over depth; tanh + naive
  U[+-1/sqrt(n)] vanishes below 1e-2 by layer 20; relu + He is stable, relu + Xavier(gain 1)
  decays > 10x; zero init never breaks symmetry; a 30-layer ReLU net trains with He but not
  (or much slower) with Xavier(gain 1); sigmoid units are not yet saturated at init.

Command:   python -m experiments.init_gain [--quick] [--dataset=digits|mnist|fashion_mnist]
Runtime:   --quick <= 2 min on 2 CPU cores (Part 1 grid + the 6 configurations the claims
           need, 6 epochs, one seed); the full grid (25 trainings + the 2 deep nets x 3
           seeds, 10 epochs) 7 min 39 s on 2 idle cores.
Expected:  full mode: 8/8 claims confirmed on digits (30-layer He 0.86 +- 0.06 over 3
           seeds, Xavier gain 1 0.10). Quick mode: 7/8; its 6 epochs are too few for the
           30-layer He net on this CPU (0.45-0.47 with 2 seeds), and its report says so.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from callbacks.layer_statistics import LayerStatistics, write_histogram
from experiments import runtime
from experiments.data import images
from layers.initializers import get_initializer
from optimizers.schedules import WarmupCosineDecay
from optimizers.sgd import SGD

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu")
INITS = ("zeros", "naive", "xavier", "xavier_gain", "he")
INIT_LABELS = {"zeros": "zeros", "naive": "naive U[±1/√n]", "xavier": "Xavier gain 1",
               "xavier_gain": "Xavier table gain", "he": "He"}
LEAKY_SLOPE = 0.01  # the slope the gain table (layers.initializers.gain) assumes

flags.DEFINE_list("activations", list(ACTIVATIONS), "Hidden activations to sweep.")
flags.DEFINE_list("inits", list(INITS), "Initialisations to sweep: " + ", ".join(INITS) + ".")
flags.DEFINE_integer("depth", 20, "Hidden layers of the MLPs.", lower_bound=2)
flags.DEFINE_integer("deep_depth", 30, "Hidden layers of the He-vs-Xavier ReLU nets.",
                     lower_bound=2)
flags.DEFINE_integer("deep_seeds", 3, "Seeds of each deep He-vs-Xavier ReLU net (their claims "
                     "use the mean over seeds).", lower_bound=1)
flags.DEFINE_integer("width", 256, "Units per hidden layer.", lower_bound=1)
flags.DEFINE_integer("probe_size", 512, "Examples in the Part 1 probe batch.", lower_bound=2)
flags.DEFINE_enum("train_grid", "all", ["all", "claims", "none"],
                  "Part 2: train every (activation, init) pair, only those the claims need, "
                  "or none.")


@flags.validator("activations", message=f"--activations must be among {', '.join(ACTIVATIONS)}")
def _check_activations(values):
    return bool(values) and set(values) <= set(ACTIVATIONS)


@flags.validator("inits", message=f"--inits must be among {', '.join(INITS)}")
def _check_inits(values):
    return bool(values) and set(values) <= set(INITS)


# ------------------------------------------------------------------------------- science
def build_mlp(input_dim, num_classes, depth, width, activation, init, seed):
    """A deep MLP: `depth` x [Dense(width) -> activation], then Dense(num_classes) logits.

    Every kernel gets `init` (with the gain for `activation`, or 1 for the linear output),
    each layer its own seed; biases start at 0.

    Returns:
        A `keras.Sequential`; hidden outputs are the layers named "act_XX".
    """
    layers = [keras.Input((input_dim,))]
    for i in range(depth):
        layers.append(keras.layers.Dense(
            width, kernel_initializer=get_initializer(init, activation, seed=seed + i),
            bias_initializer="zeros", name=f"dense_{i + 1:02d}"))
        if activation == "leaky_relu":
            layers.append(keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE,
                                                 name=f"act_{i + 1:02d}"))
        else:
            layers.append(keras.layers.Activation(activation, name=f"act_{i + 1:02d}"))
    layers.append(keras.layers.Dense(
        num_classes, kernel_initializer=get_initializer(init, "linear", seed=seed + depth),
        bias_initializer="zeros", dtype="float32", name="logits"))  # float32 under mixed precision
    # One Sequential from the full list: `add` one layer at a time rebuilds the graph on every
    # call (quadratic in depth; 2.6 s per 30-layer net).
    model = keras.Sequential(layers, name=f"{activation}_{init}_d{depth}")
    return model


def hidden_layers(model):
    return [layer for layer in model.layers if layer.name.startswith("act_")]


def signal_statistics(model, x, y, activation):
    """Per hidden layer: std of activations h_l and of back-propagated gradients dL/dh_l.

    L is the mean softmax cross-entropy of the batch. Saturation is the fraction of units in
    the flat part of the activation (|h| > 0.99 for tanh; h < 0.01 or > 0.99 for sigmoid;
    h == 0 for relu).

    Returns:
        Dict of equal-length lists: "activation_std", "gradient_std", "saturation",
        "activations" (the arrays, for histograms) and "gradients".
    """
    hidden = set(id(layer) for layer in hidden_layers(model))
    h = tf.convert_to_tensor(x)
    outputs = []
    with tf.GradientTape() as tape:
        for layer in model.layers:
            h = layer(h)
            if id(layer) in hidden:
                outputs.append(h)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            y, h, from_logits=True))
    grads = tape.gradient(loss, outputs)
    acts = [o.numpy() for o in outputs]
    return {
        "activation_std": [float(a.std()) for a in acts],
        "gradient_std": [float(g.numpy().std()) for g in grads],
        "saturation": [saturated_fraction(activation, a) for a in acts],
        "activations": acts,
        "gradients": [g.numpy() for g in grads],
    }


def saturated_fraction(activation, values):
    """Fraction of `values` in the flat region of `activation` (NaN where none is defined)."""
    if activation == "tanh":
        return float(np.mean(np.abs(values) > 0.99))
    if activation == "sigmoid":
        return float(np.mean((values < 0.01) | (values > 0.99)))
    if activation == "relu":
        return float(np.mean(values == 0))
    return float("nan")


def unit_spread(model):
    """Largest difference between two units of the same hidden layer, relative to the weights.

    Units are the columns of a hidden kernel (with their bias). Zero means every unit of
    every hidden layer is identical: symmetry was never broken.
    """
    spread, scale = 0.0, 1e-12
    for layer in model.layers:
        if layer.name.startswith("dense_"):
            kernel, bias = (w.numpy() for w in layer.weights)
            units = np.vstack([kernel, bias[None]])
            spread = max(spread, float(np.max(units.max(axis=1) - units.min(axis=1))))
            scale = max(scale, float(np.max(np.abs(units))))
    return spread / scale


def standardize(x_train, x_val):
    """Zero-mean, unit-variance features (train statistics): the inputs the theory assumes."""
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_val - mean) / std


# ----------------------------------------------------------------------------- the run
def part1_at_init(run, data, num_classes, *, activations, inits, depth, width, probe_size,
                  seed):
    """Signal statistics at initialisation for every (activation, init) pair."""
    (x_train, y_train), _ = data
    x, y = x_train[:probe_size], y_train[:probe_size]
    rows, curves = [], {}
    for activation in activations:
        for init in inits:
            model = build_mlp(x.shape[1], num_classes, depth, width, activation, init, seed)
            stats = signal_statistics(model, x, y, activation)
            curves[activation, init] = stats
            write_depth_summaries(run.subdir("at_init", f"{activation}_{init}"), stats)
            first, last = stats["activation_std"][0], stats["activation_std"][-1]
            rows.append({"activation": activation, "init": INIT_LABELS[init],
                         "std layer 1": first, f"std layer {depth}": last,
                         "ratio last/first": last / first if first else float("nan"),
                         "grad std layer 1": stats["gradient_std"][0],
                         f"grad std layer {depth}": stats["gradient_std"][-1],
                         "top-layer saturation": stats["saturation"][-1]})
    run.add_table(f"Part 1: signal at initialisation (depth {depth}, width {width})",
                  rows, key="at_init")
    run.add_figure("std_vs_depth", plot_std_vs_depth(curves),
                   "Activation std (top) and gradient std (bottom) per layer at initialisation")
    return curves


def write_depth_summaries(log_dir, stats):
    """TensorBoard: per-layer histograms and std, with the layer index as the step."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for layer, (a, g) in enumerate(zip(stats["activations"], stats["gradients"]), start=1):
            write_histogram("activations_by_layer", a, layer)
            write_histogram("gradients_by_layer", g, layer)
            tf.summary.scalar("activation_std_by_layer", stats["activation_std"][layer - 1],
                              step=layer)
            tf.summary.scalar("gradient_std_by_layer", stats["gradient_std"][layer - 1],
                              step=layer)
    writer.flush()


def plot_std_vs_depth(curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    activations = list(dict.fromkeys(a for a, _ in curves))
    fig, axes = plt.subplots(2, len(activations), figsize=(3.2 * len(activations), 6),
                             squeeze=False, sharex=True)
    for col, activation in enumerate(activations):
        for (act, init), stats in curves.items():
            if act != activation:
                continue
            for row, key in enumerate(("activation_std", "gradient_std")):
                values = np.asarray(stats[key])
                layers = np.arange(1, len(values) + 1)
                positive = values > 0  # zeros init has std 0: nothing to draw on a log axis
                axes[row, col].semilogy(layers[positive], values[positive], label=INIT_LABELS[init])
        axes[0, col].set_title(activation)
        axes[1, col].set_xlabel("layer")
    axes[0, 0].set_ylabel("activation std")
    axes[1, 0].set_ylabel("gradient std dL/dh")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_configs(train_grid, activations, inits, depth, deep_depth):
    """The configurations Part 2 trains, as two lists of dicts (activation, init, depth):
    those trained once, and the deep He-vs-Xavier ReLU nets, trained with several seeds."""
    if train_grid == "none":
        return [], []
    deep = [("relu", "he", deep_depth), ("relu", "xavier", deep_depth)]
    if train_grid == "claims":
        grid = [("sigmoid", "zeros", depth), ("tanh", "xavier_gain", depth),
                ("tanh", "naive", depth), ("relu", "he", depth)]
    else:
        grid = [(a, i, depth) for a in activations for i in inits]
    # Each configuration once: a deep one (deep_depth may equal depth) only among the deep.
    as_dicts = lambda configs: [  # noqa: E731
        {"activation": a, "init": i, "depth": d} for a, i, d in dict.fromkeys(configs)]
    return as_dicts(c for c in grid if c not in deep), as_dicts(deep)


def part2_training(run, data, num_classes, configurations, *, width, epochs, batch_size,
                   learning_rate, deep_configurations=(), deep_seeds=(0,)):
    """Trains each configuration (a sweep sub-run) with the same optimizer and schedule.

    Args:
        configurations: Trained once, with the run's seed (sweep "train").
        deep_configurations: Trained once per seed in `deep_seeds` (sweep "deep").

    Returns:
        Outcomes keyed by (activation, init, depth): the mean validation accuracy over the
        configuration's seeds, each seed's, the mean curve.
    """
    (x_train, y_train), (x_val, y_val) = data
    steps_per_epoch = len(x_train) // batch_size
    probe = (x_val[:256], y_val[:256])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def train_point(point):
        activation, init, depth = (point.hparams[k] for k in ("activation", "init", "depth"))
        task = runtime.SupervisedTask(
            lambda: build_mlp(x_train.shape[1], num_classes, depth, width, activation, init,
                              point.seed),
            lambda: SGD(WarmupCosineDecay(learning_rate, steps_per_epoch,
                                          epochs * steps_per_epoch),
                        momentum=0.9, momentum_form="classic"),
            loss,
            metrics_fn=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        statistics = LayerStatistics(
            f"{point.model_dir}/layer_statistics", probe[0], probe[1],
            loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            every_n_steps=steps_per_epoch)
        trainer = run.trainer(task, model_dir=point.model_dir,
                              callbacks=[statistics] if run.is_chief else [])
        result = trainer.fit(
            lambda epoch: runtime.epoch_batches(x_train, y_train, batch_size, seed=point.seed,
                                                epoch=epoch),
            epochs,
            validation_data=lambda: runtime.epoch_batches(x_val, y_val, batch_size,
                                                          shuffle=False, drop_remainder=False))
        accuracy = result.final("validation").get("accuracy", float("nan"))
        return {"status": result.status, "validation_accuracy": accuracy,
                "diverged_at_step": result.diverged_at_step,
                "accuracy_curve": [h.get("validation", {}).get("accuracy")
                                   for h in result.history],
                "unit_spread": unit_spread(trainer.model) if init == "zeros" else None}

    records = run.sweep("train", configurations, train_point)
    if deep_configurations:
        records += run.sweep("deep", deep_configurations, train_point, seeds=list(deep_seeds))
    groups = {}
    for record in records:
        hp = record["hparams"]
        groups.setdefault((hp["activation"], hp["init"], hp["depth"]), []).append(record)
    outcomes, rows = {}, []
    for key, group in groups.items():
        outcome = _outcome(group, num_classes)
        outcomes[key] = outcome
        rows.append({"activation": key[0], "init": INIT_LABELS[key[1]], "depth": key[2],
                     "seeds": len(group),
                     "status": ", ".join(dict.fromkeys(
                         r["status"] + (f" at step {step}" if step else "")
                         for r, step in zip(group, outcome["diverged_at_steps"]))),
                     "validation accuracy": outcome["validation_accuracy"],
                     "SD over seeds": ("-" if outcome["accuracy_sd"] is None
                                       else outcome["accuracy_sd"]),
                     "trained (> chance + 0.2)": "yes" if outcome["trained"] else "no"})
    if rows:
        run.add_table(f"Part 2: training ({epochs} epochs, SGD momentum 0.9, "
                      f"warmup + cosine, peak lr {learning_rate})", rows)
        run.data["training"] = list(outcomes.values())
        run.add_figure("accuracy_curves", plot_accuracy(outcomes),
                       "Validation accuracy per epoch for each trained configuration")
    return outcomes


def _outcome(records, num_classes):
    """One configuration's sub-runs (one per seed) summarised: mean accuracy and curve."""
    hp = records[0]["hparams"]
    accuracies = [record["metrics"].get("validation_accuracy") for record in records]
    accuracies = [float("nan") if a is None else float(a) for a in accuracies]
    curves = [[np.nan if a is None else a for a in record["metrics"].get("accuracy_curve", [])]
              for record in records]
    padded = np.full((len(curves), max(map(len, curves))), np.nan)
    for row, curve in zip(padded, curves):
        row[:len(curve)] = curve
    with warnings.catch_warnings():  # an epoch no seed reached (it diverged) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_curve = np.nanmean(padded, axis=0)
    accuracy = float(np.mean(accuracies))
    return {**hp, "status": ", ".join(dict.fromkeys(r["status"] for r in records)),
            "diverged_at_steps": [r["metrics"].get("diverged_at_step") for r in records],
            "seeds": [record["seed"] for record in records],
            "seed_accuracies": accuracies,
            "validation_accuracy": accuracy,
            "accuracy_sd": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
            "accuracy_curve": [None if np.isnan(v) else float(v) for v in mean_curve],
            "trained": bool(accuracy > 1.0 / num_classes + 0.2),
            "unit_spread": records[0]["metrics"].get("unit_spread")}


def plot_accuracy(outcomes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (activation, init, depth), outcome in outcomes.items():
        curve = [np.nan if a is None else a for a in outcome["accuracy_curve"]]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3,
                label=f"{activation} / {INIT_LABELS[init]} / {depth} layers")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def record_claims(run, curves, outcomes, depth, deep_depth):
    """The notes' claims, each with its measured number and pass rule."""

    def ratio(activation, init):
        stats = curves.get((activation, init))
        if stats is None:
            return None
        return stats["activation_std"][-1] / stats["activation_std"][0]

    run.claim("tanh + Xavier with gain 5/3 keeps the activation std within 2x over depth",
              ratio("tanh", "xavier_gain"), "in [0.5, 2]", f"std(layer {depth}) / std(layer 1)")
    run.claim(f"tanh + naive U[±1/√n]: std at layer {depth} below 1e-2 of layer 1 (vanishing)",
              ratio("tanh", "naive"), "< 0.01", f"std(layer {depth}) / std(layer 1)")
    run.claim("relu + He keeps the activation std within 2x over depth",
              ratio("relu", "he"), "in [0.5, 2]", f"std(layer {depth}) / std(layer 1)")
    decay = ratio("relu", "xavier")
    run.claim(f"relu + Xavier gain 1 decays by more than 10x over {depth} layers",
              1 / decay if decay else None, "> 10", f"std(layer 1) / std(layer {depth})")
    sigmoid = curves.get(("sigmoid", "naive")) or curves.get(("sigmoid", "xavier"))
    run.claim("sigmoid: top hidden layer not yet saturated at initialisation (Glorot & Bengio "
              "2010 see saturation develop during training)",
              sigmoid["saturation"][-1] if sigmoid else None, "< 0.1",
              f"fraction of layer-{depth} units < 0.01 or > 0.99")
    zeros = [o for o in outcomes.values() if o["init"] == "zeros"]
    run.claim("zero init never breaks symmetry: all units of a hidden layer identical after "
              "training", max(o["unit_spread"] for o in zeros) if zeros else None, "< 1e-5",
              "max unit difference / max |weight|")
    he = outcomes.get(("relu", "he", deep_depth))
    xavier = outcomes.get(("relu", "xavier", deep_depth))

    def per_seed(outcome):
        return ", ".join(f"{a:.3f}" for a in outcome["seed_accuracies"])

    run.claim(f"{deep_depth}-layer ReLU net trains with He init (He et al. 2015)",
              he["validation_accuracy"] if he else None, "> 0.5",
              f"mean validation accuracy over {len(he['seeds'])} seed(s): {per_seed(he)}"
              if he else "")
    run.claim(f"{deep_depth}-layer ReLU net: Xavier gain 1 trains much slower or not at all",
              he["validation_accuracy"] - xavier["validation_accuracy"] if he and xavier
              else None, "> 0.2",
              "mean accuracy(He) - mean accuracy(Xavier), same epochs and seeds; Xavier: "
              f"{per_seed(xavier)}" if he and xavier else "")


def experiment(run):
    config = run.config
    data = images.load_image_classification(config.dataset, data_dir=config.data_dir,
                                            seed=config.seed)
    (x_train, y_train), (x_val, y_val) = data
    x_train, x_val = standardize(x_train, x_val)
    data = (x_train, y_train), (x_val, y_val)
    num_classes = images.num_classes(config.dataset)
    curves = part1_at_init(run, data, num_classes, activations=config.activations,
                           inits=config.inits, depth=config.depth, width=config.width,
                           probe_size=config.probe_size, seed=config.seed)
    configurations, deep = training_configs(config.train_grid, config.activations,
                                            config.inits, config.depth, config.deep_depth)
    outcomes = part2_training(run, data, num_classes, configurations, width=config.width,
                              epochs=config.epochs, batch_size=config.batch_size,
                              learning_rate=config.learning_rate, deep_configurations=deep,
                              deep_seeds=[config.seed + i for i in range(config.deep_seeds)])
    record_claims(run, curves, outcomes, config.depth, config.deep_depth)
    if config.quick and deep:
        run.add_text("Quick mode", f"Quick mode trains each {config.deep_depth}-layer net for "
                     f"{config.epochs} epochs with {config.deep_seeds} seed(s): the He net may "
                     "still be climbing (see the accuracy curves), so the deep-net claims are "
                     "decided by the full mode (10 epochs, 3 seeds), not by this run.")
    if any("diverged" in o["status"] for o in outcomes.values()):
        run.add_text("Diverged runs", "Runs marked diverged stopped at a non-finite loss; "
                     "the sweep carried on.")
    run.metrics.update({
        f"accuracy/{k[0]}_{k[1]}_d{k[2]}": o["validation_accuracy"] for k, o in outcomes.items()})


EXPERIMENT = runtime.Experiment(
    "init_gain", experiment,
    defaults={"epochs": 10, "learning_rate": 0.01, "batch_size": 64},
    quick={"epochs": 6, "batch_size": 32, "train_grid": "claims", "probe_size": 256,
           "deep_seeds": 1},
    datasets=images.DATASETS)

if __name__ == "__main__":
    EXPERIMENT.launch()
