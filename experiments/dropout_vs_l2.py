"""Regularisation: dropout vs L1/L2, early stopping, and AdamW vs Adam + L2, with seed noise.

One sweep through the shared runtime (every configuration x seed a resumable sub-run and an
HParams session) trains a digits MLP (64 -> 256 -> 256 -> 10, ReLU, He init) in three parts:

- methods, at one intermediate training-set size: no regularisation; dropout p in {0.2, 0.5}
  on the hidden units with input dropout 0.2 (Srivastava et al. 2014); L2 (Keras
  `kernel_regularizer`, lambda * sum(w^2)) in {1e-4, 1e-3}; L1; dropout + L2; early stopping
  (`keras.callbacks.EarlyStopping(restore_best_weights=True)` through the runtime); Adam +
  coupled L2 (`optimizers.AdamL2`) and AdamW (`optimizers.AdamW`);
- training-set sizes (100 / 300 / 1000 / all): none, dropout, L2, dropout + L2 (Srivastava
  Fig. 10: dropout gains nothing at a few hundred examples, most at intermediate sizes);
- AdamW vs Adam + L2 over a log-spaced learning-rate x decay grid. The grid is laid out in
  Loshchilov & Hutter's parametrisation (AdamW's per-step shrink factor 1 - lambda_paper,
  independent of the learning rate); the suite's and Keras' AdamW multiply the decay by the
  learning rate (theta *= 1 - lr * lambda_keras), so lambda_keras = lambda_paper / lr. Both are
  reported, with the slope of log(best decay) vs log(lr) per optimizer.

Biases (every variable with fewer than 2 dimensions: biases, normalisation scales and
offsets) are never penalised or decayed in any arm. Every run gets the same step budget
(epochs x --epoch_steps optimizer steps, batches drawn from repeated shuffled passes over
its training subset), so the training-set sizes differ only in data. The selected model
(the last epoch, or early stopping's restored best) is evaluated in inference mode on its
training subset, the validation split (selection) and a test split (only reported).

Statistics: every configuration over --seeds_per_config seeds (init, data subset, order and
dropout masks; arms share seeds). A difference counts only beyond seed noise, a rule fixed
before any run: mean difference minus 2 x its standard error (Welch: sqrt(sum s_i^2 / n_i),
s the sample std over seeds) must be > 0.

Command:   python -m experiments.dropout_vs_l2 [--quick] [--dataset=digits|mnist|fashion_mnist]
Runtime:   --quick: 15 configurations x 2 seeds = 30 sub-runs of 8 epochs x 50 steps (7
           methods, sizes 100/300 for none and dropout, a 2 x 2 lr x decay grid per
           optimizer): 97 s wall on 2 free CPU cores (make run on a fresh clone).
           Full: 52 configurations x 3 seeds = 156 sub-runs of 20 epochs x 40 steps: 16 min
           wall (755 CPU-s) on 2 cores shared with a test run; 4 of 7 claims confirmed.
Expected:  see the README section and report.md; in quick mode two seeds and a 2 x 2 grid are
           too few to decide the decay-slope claim (the report says so).
"""

import math

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from experiments import runtime
from experiments.data import images
from experiments.runtime.sweep import configuration_key
from optimizers.adam import Adam, AdamL2, AdamW

flags.DEFINE_list("mlp_units", ["256", "256"], "Hidden units of the MLP, one entry per layer.")
flags.DEFINE_list("train_sizes", ["100", "300", "1000", "all"],
                  "Training-set sizes of the size sweep (integers or 'all').")
flags.DEFINE_integer("method_train_size", 300,
                     "Training-set size of the method comparison and the decay grid (the "
                     "intermediate size of the claims).", lower_bound=10)
flags.DEFINE_list("dropout_rates", ["0.2", "0.5"], "Hidden-unit dropout rates p.")
flags.DEFINE_float("input_dropout", 0.2, "Input dropout rate of every dropout arm.",
                   lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_list("l2_values", ["1e-4", "1e-3"], "L2 coefficients: loss += lambda * sum(w^2).")
flags.DEFINE_float("l1_value", 1e-4, "L1 coefficient: loss += lambda * sum(|w|).",
                   lower_bound=0.0)
flags.DEFINE_list("grid_learning_rates", ["3.16e-4", "1e-3", "3.16e-3", "1e-2"],
                  "Learning rates of the AdamW vs Adam + L2 grid (include --learning_rate).")
flags.DEFINE_list("adamw_decays", ["1e-4", "3.16e-4", "1e-3", "3.16e-3"],
                  "AdamW decays in the paper's parametrisation (per-step shrink; Keras "
                  "weight_decay = this / lr). The first-but-one is the methods arm.")
flags.DEFINE_list("adam_l2_decays", ["1e-5", "3.16e-5", "1e-4", "3.16e-4"],
                  "Adam + L2 coefficients (g += lambda * theta). The first-but-one is the "
                  "methods arm.")
flags.DEFINE_integer("seeds_per_config", 3, "Seeds per configuration (--seed, --seed+1, ...).",
                     lower_bound=1)
flags.DEFINE_integer("es_patience", 3, "Early stopping patience in epochs.", lower_bound=1)
flags.DEFINE_integer("epoch_steps", 40,
                     "Optimizer steps per epoch (one validation and checkpoint each), the same "
                     "at every training-set size.", lower_bound=1)
flags.DEFINE_list("size_methods", ["none", "dropout", "l2", "dropout+l2"],
                  "Methods of the training-set-size sweep: none, dropout, l2, dropout+l2.")
flags.DEFINE_bool("combined_arm", True, "Include the dropout + L2 arm in the method comparison.")
flags.DEFINE_list("study_parts", ["methods", "sizes", "grid"],
                  "Parts to run: methods, sizes, grid.")

PARTS = ("methods", "sizes", "grid")
SIZE_METHODS = ("none", "dropout", "l2", "dropout+l2")


@flags.validator("study_parts", message="--study_parts must be among methods, sizes, grid")
def _check_parts(values):
    return bool(values) and set(values) <= set(PARTS)


@flags.validator("size_methods", message="--size_methods must be among none, dropout, l2, "
                 "dropout+l2 and include none and dropout")
def _check_size_methods(values):
    return set(values) <= set(SIZE_METHODS) and {"none", "dropout"} <= set(values)


# ------------------------------------------------------------------------------- science
def is_decayed(variable):
    """Whether an arm may penalise or decay `variable`: kernels yes; biases, norms never."""
    return len(variable.shape) >= 2


def build_mlp(input_dim, num_classes, units, *, dropout=0.0, input_dropout=0.0, l1=0.0, l2=0.0,
              seed=0):
    """ReLU MLP with optional input/hidden dropout and L1/L2 penalties on the kernels only.

    The penalty is Keras' `lambda * sum(w^2)` (L2) and `lambda * sum(|w|)` (L1) per kernel,
    collected in `model.losses` (the runtime adds and logs it as regularization_loss); biases
    get no regulariser.
    """
    regularizer = None
    if l1 or l2:
        regularizer = keras.regularizers.L1L2(l1=float(l1), l2=float(l2))
    model = keras.Sequential([keras.Input((input_dim,))], name="mlp")
    if dropout and input_dropout:
        model.add(keras.layers.Dropout(input_dropout, seed=seed * 1000 + 999, name="drop_in"))
    for i, width in enumerate(units):
        model.add(keras.layers.Dense(
            width, activation="relu", kernel_initializer=keras.initializers.HeNormal(
                seed=seed * 1000 + i), kernel_regularizer=regularizer, name=f"dense_{i + 1}"))
        if dropout:
            model.add(keras.layers.Dropout(dropout, seed=seed * 1000 + 500 + i,
                                           name=f"drop_{i + 1}"))
    model.add(keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.GlorotUniform(
            seed=seed * 1000 + len(units)), kernel_regularizer=regularizer, name="logits"))
    return model


def make_optimizer(name, learning_rate, decay=0.0):
    """Adam, Adam + coupled L2 (`l2 = decay`) or AdamW with `decay` in the paper's terms.

    AdamW's Keras-style `weight_decay` is `decay / learning_rate`, so the per-step shrink
    `lr * weight_decay` equals `decay` whatever the learning rate (Loshchilov & Hutter 2019).
    """
    if name == "adam":
        return Adam(learning_rate)
    if name == "adam_l2":
        return AdamL2(learning_rate, l2=decay)
    if name == "adamw":
        return AdamW(learning_rate, weight_decay=decay / learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")


def exclude_non_kernels(optimizer, model):
    """Exempts every non-kernel variable (biases, norm parameters) from decay / coupled L2."""
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if not is_decayed(v)])
    return optimizer


class RegularisedTask(runtime.SupervisedTask):
    """Softmax cross-entropy on (x, y); the optimizer never decays what `is_decayed` rejects."""

    def __init__(self, model_fn, optimizer_fn):
        super().__init__(
            model_fn, optimizer_fn,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
            metrics_fn=lambda: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        self.model = None

    def build_model(self):
        self.model = super().build_model()
        return self.model

    def build_optimizer(self):
        return exclude_non_kernels(super().build_optimizer(), self.model)


def kernel_statistics(model):
    """(L2 norm of all kernels, fraction of kernel weights below 1e-3 x max|w| of their kernel)."""
    kernels = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables if is_decayed(v)]
    norm = math.sqrt(sum(float(np.sum(k.astype(np.float64) ** 2)) for k in kernels))
    small = sum(int(np.sum(np.abs(k) < 1e-3 * np.max(np.abs(k)))) for k in kernels)
    return norm, small / sum(k.size for k in kernels)


def split_holdout(x, y, seed):
    """Splits a held-out set in half, class-stratified: (validation, test)."""
    order = np.random.default_rng([seed, 7]).permutation(len(y))
    val, test = [], []
    for c in np.unique(y):
        idx = order[y[order] == c]
        val.extend(idx[: (len(idx) + 1) // 2])
        test.extend(idx[(len(idx) + 1) // 2:])
    val, test = np.sort(val), np.sort(test)
    return (x[val], y[val]), (x[test], y[test])


def balanced_subset(y, size, seed):
    """Indices of `size` training examples, classes as balanced as possible (nested in size)."""
    order = np.random.default_rng([seed, 11]).permutation(len(y))
    rank = np.empty(len(y), np.int64)
    for c in np.unique(y):
        members = order[y[order] == c]
        rank[members] = np.arange(len(members))
    position = np.empty(len(y), np.int64)
    position[order] = np.arange(len(y))
    return np.lexsort((position, rank))[:size]


def step_batches(x, y, batch_size, steps, seed, epoch):
    """`steps` batches for one epoch, drawn from shuffled passes fixed by (seed, epoch)."""
    need, parts, k = steps * batch_size, [], 0
    while sum(len(p) for p in parts) < need:
        parts.append(np.random.default_rng([seed, epoch, k]).permutation(len(y)))
        k += 1
    idx = np.concatenate(parts)[:need]
    return tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(batch_size,
                                                                       drop_remainder=True)


def eval_batches(x, y, batch_size):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def arm(method, train_size, *, dropout=0.0, input_dropout=0.0, l2=0.0, l1=0.0,
        early_stopping=False, optimizer="adam", learning_rate, decay=0.0):
    """The hparams of one configuration (the same keys, in the same order, for every arm)."""
    return {"method": method, "train_size": int(train_size), "dropout": float(dropout),
            "input_dropout": float(input_dropout) if dropout else 0.0, "l2": float(l2),
            "l1": float(l1), "early_stopping": bool(early_stopping), "optimizer": optimizer,
            "learning_rate": float(learning_rate), "decay": float(decay),
            "decay_keras": float(f"{decay / learning_rate if optimizer == 'adamw' else decay:.6g}")}


def study_configurations(parts, *, sizes, mid_size, size_methods=SIZE_METHODS,
                         combined_arm=True, dropout_rates, input_dropout, l2_values,
                         l1, learning_rate, grid_lrs, adamw_decays, adam_l2_decays):
    """Every configuration of the study, each once, with the parts that use it.

    Returns:
        (configurations, roles): hparams dicts in order, and for each part a dict
        role -> configuration (methods: method label; sizes: (method, size); grid:
        (optimizer, lr, decay)).
    """
    p_main, l2_main = max(dropout_rates), max(l2_values)
    dropped = {"dropout": p_main, "input_dropout": input_dropout}
    roles = {part: {} for part in PARTS}
    if "methods" in parts:
        n = mid_size
        methods = roles["methods"]
        methods["none"] = arm("none", n, learning_rate=learning_rate)
        for p in dropout_rates:
            methods[f"dropout {p:g}"] = arm("dropout", n, dropout=p, input_dropout=input_dropout,
                                            learning_rate=learning_rate)
        for lam in l2_values:
            methods[f"L2 {lam:g}"] = arm("l2", n, l2=lam, learning_rate=learning_rate)
        methods[f"L1 {l1:g}"] = arm("l1", n, l1=l1, learning_rate=learning_rate)
        if combined_arm:
            methods[f"dropout {p_main:g} + L2 {min(l2_values):g}"] = arm(
                "dropout+l2", n, l2=min(l2_values), **dropped, learning_rate=learning_rate)
        methods["early stopping"] = arm("early_stopping", n, early_stopping=True,
                                        learning_rate=learning_rate)
        for name, decays in (("adam_l2", adam_l2_decays), ("adamw", adamw_decays)):
            decay = decays[min(1, len(decays) - 1)]
            methods[f"{'Adam + L2' if name == 'adam_l2' else 'AdamW'} {decay:g}"] = arm(
                name, n, optimizer=name, learning_rate=learning_rate, decay=decay)
    if "sizes" in parts:
        for size in sizes:
            common = {"learning_rate": learning_rate}
            arms = {"none": arm("none", size, **common),
                    "dropout": arm("dropout", size, **dropped, **common),
                    "l2": arm("l2", size, l2=l2_main, **common),
                    "dropout+l2": arm("dropout+l2", size, l2=min(l2_values), **dropped,
                                      **common)}
            for method in size_methods:
                roles["sizes"][method, size] = arms[method]
    if "grid" in parts:
        for name, decays in (("adam_l2", adam_l2_decays), ("adamw", adamw_decays)):
            for lr in grid_lrs:
                for decay in decays:
                    roles["grid"][name, lr, decay] = arm(name, mid_size, optimizer=name,
                                                         learning_rate=lr, decay=decay)
    unique = {}
    for part in PARTS:
        for config in roles[part].values():
            unique.setdefault(configuration_key(config), config)
    return list(unique.values()), roles


def train_configuration(run, point, data, *, units, batch_size, epochs, epoch_steps,
                        patience):
    """Trains one (configuration, seed) and measures the selected model."""
    hp, seed = point.hparams, point.seed
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    subset = balanced_subset(y_train, hp["train_size"], seed)
    x_sub, y_sub = x_train[subset], y_train[subset]
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    task = RegularisedTask(
        lambda: build_mlp(x_train.shape[1], num_classes, units, dropout=hp["dropout"],
                          input_dropout=hp["input_dropout"], l1=hp["l1"], l2=hp["l2"],
                          seed=seed),
        lambda: make_optimizer(hp["optimizer"], hp["learning_rate"], hp["decay"]))
    stopper = None
    callbacks = []
    if hp["early_stopping"]:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                restore_best_weights=True)
        callbacks.append(stopper)
    trainer = run.trainer(task, model_dir=point.model_dir, callbacks=callbacks, verbose=0)
    result = trainer.fit(
        lambda epoch: step_batches(x_sub, y_sub, batch_size, epoch_steps, seed, epoch), epochs,
        validation_data=lambda: eval_batches(x_val, y_val, batch_size))
    if result.status == "diverged":
        return {"status": "diverged", "diverged_at_step": result.diverged_at_step}
    evaluate = {name: trainer.evaluate(lambda a=a, b=b: eval_batches(a, b, batch_size))
                for name, (a, b) in (("train", (x_sub, y_sub)), ("validation", (x_val, y_val)),
                                     ("test", (x_test, y_test)))}
    norm, near_zero = kernel_statistics(trainer.model)
    val_losses = [h["validation"]["loss"] for h in result.history]
    chosen = stopper.best_epoch + 1 if stopper is not None else len(result.history)
    return {"status": result.status,
            "train_accuracy": evaluate["train"]["accuracy"],
            "train_loss": evaluate["train"]["loss"],
            "validation_accuracy": evaluate["validation"]["accuracy"],
            "validation_loss": evaluate["validation"]["loss"],
            "test_accuracy": evaluate["test"]["accuracy"], "test_loss": evaluate["test"]["loss"],
            "gap_accuracy": evaluate["train"]["accuracy"] - evaluate["validation"]["accuracy"],
            "gap_loss": evaluate["validation"]["loss"] - evaluate["train"]["loss"],
            "kernel_l2_norm": norm, "near_zero_fraction": near_zero,
            "chosen_epoch": chosen, "epochs_trained": len(result.history),
            "validation_loss_argmin_epoch": int(np.argmin(val_losses)) + 1,
            "validation_loss_curve": val_losses,
            "seconds": result.seconds}


# ------------------------------------------------------------------------- statistics
def summarise(values):
    """(mean, sample std, n) of the finite values (std 0 for one value)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def standard_error(*groups):
    """Welch standard error of a (signed) sum of group means: sqrt(sum s_i^2 / n_i)."""
    total = 0.0
    for values in groups:
        _, s, n = summarise(values)
        if n == 0:
            return float("nan")
        total += s * s / n
    return math.sqrt(total)


def margin(better, worse, *extra):
    """(mean(better) - mean(worse), 2 x SE, difference - 2 x SE): the seed-noise rule."""
    diff = summarise(better)[0] - summarise(worse)[0]
    two_se = 2 * standard_error(better, worse, *extra)
    return diff, two_se, diff - two_se


def best_decay(cells):
    """The decay with the highest validation accuracy (ties: the lower validation loss).

    Args:
        cells: {decay: (validation accuracy, validation loss)}.
    """
    finite = {d: v for d, v in cells.items() if np.isfinite(v[0])}
    if not finite:
        return None
    return max(finite, key=lambda d: (round(finite[d][0], 6), -finite[d][1]))


def slope(lrs, decays):
    """Least-squares slope of log10(decay) vs log10(lr) (None with fewer than 2 points)."""
    pairs = [(math.log10(lr), math.log10(d)) for lr, d in zip(lrs, decays) if d]
    if len(pairs) < 2:
        return None
    x, y = np.asarray(pairs).T
    return round(float(np.polyfit(x, y, 1)[0]), 9)  # no float dust on a flat line


# ---------------------------------------------------------------------------- analysis
class Results:
    """Sweep records grouped by configuration key."""

    def __init__(self, records):
        self.by_key = {}
        for record in records:
            self.by_key.setdefault(record["key"], []).append(record)

    def values(self, config, metric):
        records = self.by_key.get(configuration_key(config), [])
        return [r["metrics"].get(metric, float("nan")) if r["status"] != "diverged"
                else float("nan") for r in records]

    def by_seed(self, config, metric):
        records = self.by_key.get(configuration_key(config), [])
        return {r["seed"]: r["metrics"].get(metric) for r in records if r["status"] != "diverged"}

    def cell(self, config, metric):
        mean, std, n = summarise(self.values(config, metric))
        return f"{mean:.3f} ± {std:.3f}" if n else "n/a"


METHOD_COLUMNS = (("train_accuracy", "train acc"), ("validation_accuracy", "val acc"),
                  ("test_accuracy", "test acc"), ("gap_accuracy", "gap (train - val acc)"),
                  ("validation_loss", "val loss"), ("kernel_l2_norm", "kernel L2 norm"),
                  ("near_zero_fraction", "near-zero fraction"), ("chosen_epoch", "chosen epoch"))


def methods_part(run, results, methods, n):
    rows = []
    for label, config in methods.items():
        row = {"method": label}
        for metric, column in METHOD_COLUMNS:
            row[column] = results.cell(config, metric)
        rows.append(row)
    run.add_table(f"Methods at {n} training examples (mean ± std over seeds; selected model)",
                  rows, key="methods")
    run.add_figure("weights", plot_weights(results, methods),
                   "Kernel L2 norm and fraction of near-zero kernel weights per method "
                   "(mean ± std over seeds)")


def plot_weights(results, methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (metric, title) in zip(axes, (("kernel_l2_norm", "kernel L2 norm"),
                                          ("near_zero_fraction",
                                           "fraction |w| < 1e-3 max|w|"))):
        stats = [summarise(results.values(methods[m], metric)) for m in labels]
        ax.bar(range(len(labels)), [s[0] for s in stats], yerr=[s[1] for s in stats],
               capsize=3, color="tab:blue")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def sizes_part(run, results, sizes_roles):
    sizes = sorted({s for _, s in sizes_roles})
    methods = [m for m in SIZE_METHODS if (m, sizes[0]) in sizes_roles]
    rows = []
    for size in sizes:
        row = {"train size": size}
        for method in methods:
            row[f"{method}: gap"] = results.cell(sizes_roles[method, size], "gap_accuracy")
            row[f"{method}: test acc"] = results.cell(sizes_roles[method, size], "test_accuracy")
        rows.append(row)
    run.add_table("Training-set size: generalisation gap (train - val accuracy) and test "
                  "accuracy (mean ± std)", rows, key="sizes")
    run.add_figure("gap_vs_train_size", plot_sizes(results, sizes_roles, sizes, methods),
                   "Generalisation gap and test accuracy vs training-set size per method "
                   "(error bars: std over seeds)")


def plot_sizes(results, roles, sizes, methods):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in methods:
        for ax, metric in zip(axes, ("gap_accuracy", "test_accuracy")):
            stats = [summarise(results.values(roles[method, s], metric)) for s in sizes]
            ax.errorbar(sizes, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                        capsize=3, label=method)
    for ax, label in zip(axes, ("gap: train acc - val acc", "test accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def grid_part(run, results, grid_roles, seeds):
    """Best decay per lr in both parametrisations, slopes per optimizer, heatmaps."""
    analysis, rows = {}, []
    for name in ("adam_l2", "adamw"):
        cells = {(lr, d): config for (o, lr, d), config in grid_roles.items() if o == name}
        lrs = sorted({lr for lr, _ in cells})
        decays = sorted({d for _, d in cells})
        mean_acc = {k: summarise(results.values(c, "validation_accuracy"))[0]
                    for k, c in cells.items()}
        mean_loss = {k: summarise(results.values(c, "validation_loss"))[0]
                     for k, c in cells.items()}
        best = {lr: best_decay({d: (mean_acc[lr, d], mean_loss[lr, d]) for d in decays})
                for lr in lrs}
        per_seed = []
        for seed in seeds:
            accs = {k: results.by_seed(c, "validation_accuracy").get(seed)
                    for k, c in cells.items()}
            losses = {k: results.by_seed(c, "validation_loss").get(seed) for k, c in cells.items()}
            seed_best = [best_decay({d: (accs[lr, d] if accs[lr, d] is not None else np.nan,
                                         losses[lr, d] if losses[lr, d] is not None else np.nan)
                                     for d in decays}) for lr in lrs]
            per_seed.append(slope(lrs, seed_best))
        to_keras = (lambda d, lr: d / lr) if name == "adamw" else (lambda d, lr: d)
        mean_slope = slope(lrs, [best[lr] for lr in lrs])
        keras_slope = slope(lrs, [to_keras(best[lr], lr) if best[lr] else None for lr in lrs])
        analysis[name] = {"lrs": lrs, "decays": decays, "mean_acc": mean_acc, "best": best,
                          "slope_paper": mean_slope, "slope_keras": keras_slope,
                          "seed_slopes_paper": [s for s in per_seed if s is not None],
                          "to_keras": to_keras}
        for lr in lrs:
            rows.append({"optimizer": "AdamW" if name == "adamw" else "Adam + L2",
                         "learning rate": lr,
                         "best decay (paper)": best[lr] if best[lr] else "n/a",
                         "best decay (Keras)": to_keras(best[lr], lr) if best[lr] else "n/a",
                         "val acc at best": mean_acc.get((lr, best[lr]), float("nan"))})
    run.add_table("AdamW vs Adam + L2: best decay per learning rate (seed-mean validation "
                  "accuracy; paper: AdamW per-step shrink lambda, Keras: weight_decay = "
                  "lambda / lr; Adam + L2's coefficient is the same in both)", rows,
                  key="decay_grid")
    slope_rows = []
    for name, a in analysis.items():
        s_mean, s_std, s_n = summarise(a["seed_slopes_paper"])
        slope_rows.append({
            "optimizer": "AdamW" if name == "adamw" else "Adam + L2",
            "slope, paper (seed-mean grid)": _fmt(a["slope_paper"]),
            "slope, Keras (seed-mean grid)": _fmt(a["slope_keras"]),
            "slope, paper, per seed (mean ± std)": f"{s_mean:.2f} ± {s_std:.2f} (n={s_n})"
            if s_n else "n/a"})
    run.add_table("Slope of log10(best decay) vs log10(learning rate)", slope_rows,
                  key="decay_slopes")
    w, l2 = analysis["adamw"], analysis["adam_l2"]
    run.add_text("Why the two parametrisations give different slopes", (
        "AdamW shrinks every kernel by `lr * weight_decay` per step in the suite's and Keras' "
        "form, and by `lambda` (times the schedule factor, here 1) in Loshchilov & Hutter's. "
        "So `lambda_keras = lambda_paper / lr` and, for the same best per-step shrink, the "
        "Keras slope is the paper slope minus 1 exactly: AdamW here "
        f"{_fmt(w['slope_paper'])} (paper) vs {_fmt(w['slope_keras'])} (Keras). A decay that "
        "does not move with the learning rate in the paper's terms slides down a diagonal "
        "(slope -1) in Keras' terms; read a Keras grid that way. Adam + L2 adds "
        "`lambda * theta` to the gradient, which Adam then divides by sqrt(v_hat): the "
        "learning rate multiplies the whole normalised step, so its coefficient is the same "
        f"number in both views (slope {_fmt(l2['slope_paper'])}). Loshchilov & Hutter's "
        "claim is that this coupling makes the best L2 coefficient depend on the learning "
        "rate while AdamW's paper-form decay does not: a paper slope near 0 for AdamW and "
        "away from 0 for Adam + L2. The claim below compares |slope| per seed against the "
        "seed noise."))
    edge = [f"{'AdamW' if n == 'adamw' else 'Adam + L2'} at lr {lr:g}"
            for n, a in analysis.items() for lr in a["lrs"]
            if a["best"][lr] in (a["decays"][0], a["decays"][-1])]
    if edge:
        run.add_text("Decay grid edges", "The best decay lies on the edge of the grid for: "
                     + ", ".join(edge) + ". The optimum is not bracketed there, so the slope "
                     "is a bound, not an estimate; widen --adamw_decays / --adam_l2_decays.")
    run.add_figure("decay_grid", plot_grid(analysis),
                   "Validation accuracy (seed mean) over learning rate x decay; circles: best "
                   "decay per learning rate. Left: paper parametrisation, right: Keras "
                   "(AdamW weight_decay = lambda / lr)")
    return analysis


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


def plot_grid(analysis):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), squeeze=False)
    for row, (name, a) in enumerate(analysis.items()):
        for col, keras_view in enumerate((False, True)):
            ax = axes[row, col]
            convert = (lambda d, lr: a["to_keras"](d, lr)) if keras_view else (lambda d, lr: d)
            points = {(lr, round(math.log10(convert(d, lr)) * 2) / 2): acc
                      for (lr, d), acc in a["mean_acc"].items()}
            ys = sorted({y for _, y in points})
            lrs = a["lrs"]
            grid = np.full((len(ys), len(lrs)), np.nan)
            for (lr, y), acc in points.items():
                grid[ys.index(y), lrs.index(lr)] = acc
            image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto",
                              cmap="viridis")
            for i in range(len(ys)):
                for j in range(len(lrs)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center",
                                fontsize=7, color="w")
            for j, lr in enumerate(lrs):
                if a["best"][lr]:
                    y = round(math.log10(convert(a["best"][lr], lr)) * 2) / 2
                    ax.plot(j, ys.index(y), "o", mfc="none", mec="r", ms=18)
            ax.set_xticks(range(len(lrs)))
            ax.set_xticklabels([f"{lr:.2g}" for lr in lrs])
            ax.set_yticks(range(len(ys)))
            ax.set_yticklabels([f"1e{y:g}" for y in ys])
            ax.set_xlabel("learning rate")
            label = "AdamW" if name == "adamw" else "Adam + L2"
            ax.set_ylabel(("weight_decay (Keras)" if keras_view else "decay (paper)")
                          if name == "adamw" else "L2 coefficient")
            ax.set_title(f"{label}, {'Keras' if keras_view else 'paper'} parametrisation")
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def record_claims(run, results, roles, grid, quick):
    """The notes' and papers' claims, each decided by the seed-noise rule."""
    methods, sizes = roles["methods"], roles["sizes"]
    n_note = " (2 seeds: quick mode, indicative only)" if quick else ""

    def rule_detail(metric, a, b, diff, two_se):
        return (f"{metric}: {a} minus {b} = {diff:+.4f}, 2 x SE = {two_se:.4f}; measured = "
                f"difference - 2 x SE (Welch SE over seeds){n_note}")

    none = methods.get("none")
    dropout = next((c for c in methods.values() if c["method"] == "dropout"
                    and c["dropout"] == max(m["dropout"] for m in methods.values())), None)
    l2 = next((c for c in methods.values() if c["method"] == "l2"
               and c["l2"] == max(m["l2"] for m in methods.values())), None)
    if none and dropout and l2:
        gap = lambda c: results.values(c, "gap_accuracy")  # noqa: E731
        d_diff, d_se, d_margin = margin(gap(none), gap(dropout))
        l_diff, l_se, l_margin = margin(gap(none), gap(l2))
        run.claim(f"Dropout ({dropout['dropout']:g}) and L2 ({l2['l2']:g}) each reduce the "
                  f"train/validation accuracy gap vs no regularisation at "
                  f"{none['train_size']} examples, beyond seed noise",
                  min(d_margin, l_margin), "> 0",
                  f"min over the two; dropout: gap(none) - gap(dropout) = {d_diff:+.4f}, "
                  f"2 x SE {d_se:.4f}; L2: {l_diff:+.4f}, 2 x SE {l_se:.4f}{n_note}")
        diff, two_se, m = margin(results.values(none, "kernel_l2_norm"),
                                 results.values(l2, "kernel_l2_norm"))
        run.claim(f"L2 ({l2['l2']:g}) shrinks the kernel L2 norm", m, "> 0",
                  rule_detail("kernel norm", "none", "L2", diff, two_se))
    l1 = next((c for c in methods.values() if c["method"] == "l1"), None)
    if none and l1:
        diff, two_se, m = margin(results.values(l1, "near_zero_fraction"),
                                 results.values(none, "near_zero_fraction"))
        run.claim(f"L1 ({l1['l1']:g}) raises the fraction of near-zero kernel weights "
                  "(|w| < 1e-3 max|w|)", m, "> 0",
                  rule_detail("near-zero fraction", "L1", "none", diff, two_se))
    stop = methods.get("early stopping")
    if none and stop:
        chosen = results.by_seed(stop, "chosen_epoch")
        minimum = results.by_seed(none, "validation_loss_argmin_epoch")
        distances = [abs(chosen[s] - minimum[s]) for s in chosen if s in minimum]
        run.claim("Early stopping restores an epoch within a few (<= 2) epochs of the "
                  "validation-loss minimum of the same run trained to the end",
                  summarise(distances)[0] if distances else None, "<= 2",
                  f"mean over seeds of |restored epoch - argmin val loss (no regularisation, "
                  f"same seed, all epochs)|; restored {sorted(chosen.values())}, minima "
                  f"{sorted(minimum.values())}")
        diff, two_se, _ = margin(results.values(stop, "test_accuracy"),
                                 results.values(none, "test_accuracy"))
        run.claim("Early stopping's test accuracy is no worse than training to the end",
                  diff + two_se, ">= 0",
                  f"test acc(early stopping) - test acc(to the end) = {diff:+.4f}, 2 x SE = "
                  f"{two_se:.4f}; measured = difference + 2 x SE (worse only beyond seed "
                  f"noise refutes){n_note}")
    size_values = sorted({s for _, s in sizes})
    if len(size_values) >= 2:
        small = size_values[0]
        mid = none["train_size"] if none and none["train_size"] in size_values[1:] else (
            size_values[len(size_values) // 2])
        acc = lambda m, s: results.values(sizes[m, s], "test_accuracy")  # noqa: E731
        gain_mid = summarise(acc("dropout", mid))[0] - summarise(acc("none", mid))[0]
        gain_small = summarise(acc("dropout", small))[0] - summarise(acc("none", small))[0]
        two_se = 2 * standard_error(acc("dropout", mid), acc("none", mid),
                                    acc("dropout", small), acc("none", small))
        run.claim(f"Dropout's test-accuracy gain over no regularisation is larger at {mid} "
                  f"than at {small} examples (Srivastava et al. 2014, Fig. 10)",
                  gain_mid - gain_small - two_se, "> 0",
                  f"gain({mid}) = {gain_mid:+.4f}, gain({small}) = {gain_small:+.4f}, 2 x SE "
                  f"of the difference = {two_se:.4f}; measured = gain({mid}) - gain({small}) "
                  f"- 2 x SE{n_note}")
    if grid and all(len(a["lrs"]) >= 2 for a in grid.values()):
        w, l = grid["adamw"]["seed_slopes_paper"], grid["adam_l2"]["seed_slopes_paper"]
        mw, ml = summarise(w)[0], summarise(l)[0]
        two_se = 2 * standard_error(w, l)
        coarse = (" Quick grid (2 learning rates x 2 decays): too coarse to decide; see the "
                  "full run." if quick else "")
        run.claim("AdamW's best decay moves less with the learning rate than Adam + L2's "
                  "(paper parametrisation; Loshchilov & Hutter 2019)",
                  abs(ml) - abs(mw) - two_se, "> 0",
                  f"per-seed slopes of log10(best decay) vs log10(lr): Adam + L2 {ml:+.2f}, "
                  f"AdamW {mw:+.2f}; 2 x SE = {two_se:.2f}; measured = |slope L2| - "
                  f"|slope W| - 2 x SE.{coarse}")


# ----------------------------------------------------------------------------- the run
def parse_sizes(values, available):
    sizes = []
    for value in values:
        value = str(value).strip().lower()
        if value == "all":
            size = available
        else:
            try:
                size = int(value)
            except ValueError:
                raise runtime.ConfigError(f"--train_sizes: {value!r} is not an integer or "
                                          "'all'") from None
        if not 0 < size <= available:
            raise runtime.ConfigError(f"--train_sizes: {size} is not in [1, {available}] "
                                      "(the training split)")
        sizes.append(size)
    return sorted(set(sizes))


def floats(name, values):
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise runtime.ConfigError(f"--{name} must be a list of numbers, got {values}") from None
    if not out or any(not math.isfinite(v) or v < 0 for v in out):
        raise runtime.ConfigError(f"--{name} must be non-negative finite numbers")
    return out


def load_data(dataset, data_dir, seed):
    """(train, validation, test): the loader's held-out split halved into validation / test."""
    (x_train, y_train), held_out = images.load_image_classification(
        dataset, data_dir=data_dir, validation_fraction=0.3, seed=seed)
    validation, test = split_holdout(*held_out, seed=seed)
    return (x_train, y_train), validation, test


def experiment(run):
    c = run.config
    data = load_data(c.dataset, c.data_dir, c.seed)
    available = len(data[0][1])
    sizes = parse_sizes(c.train_sizes, available)
    if not 0 < c.method_train_size <= available:
        raise runtime.ConfigError(f"--method_train_size={c.method_train_size} exceeds the "
                                  f"{available} training examples")
    grid_lrs = floats("grid_learning_rates", c.grid_learning_rates)
    dropout_rates = floats("dropout_rates", c.dropout_rates)
    if any(p >= 1 for p in dropout_rates):
        raise runtime.ConfigError("--dropout_rates must be in [0, 1)")
    if any(lr <= 0 for lr in grid_lrs):
        raise runtime.ConfigError("--grid_learning_rates must be > 0")
    configurations, roles = study_configurations(
        c.study_parts, sizes=sizes, mid_size=c.method_train_size,
        size_methods=c.size_methods, combined_arm=c.combined_arm,
        dropout_rates=dropout_rates, input_dropout=c.input_dropout,
        l2_values=floats("l2_values", c.l2_values), l1=c.l1_value,
        learning_rate=c.learning_rate, grid_lrs=grid_lrs,
        adamw_decays=floats("adamw_decays", c.adamw_decays),
        adam_l2_decays=floats("adam_l2_decays", c.adam_l2_decays))
    units = [int(u) for u in c.mlp_units]
    seeds = [c.seed + i for i in range(c.seeds_per_config)]
    print(f"dropout_vs_l2: {len(configurations)} configurations x {len(seeds)} seeds", flush=True)
    records = run.sweep(
        "train", configurations,
        lambda point: train_configuration(run, point, data, units=units,
                                          batch_size=c.batch_size, epochs=c.epochs,
                                          epoch_steps=c.epoch_steps, patience=c.es_patience),
        seeds=seeds)
    results = Results(records)
    if roles["methods"]:
        methods_part(run, results, roles["methods"], c.method_train_size)
    if roles["sizes"]:
        sizes_part(run, results, roles["sizes"])
    grid = grid_part(run, results, roles["grid"], seeds) if roles["grid"] else None
    small = c.quick or len(seeds) < 3
    record_claims(run, results, roles, grid, small)
    if small:
        run.add_text("Quick-mode caveats", (
            f"{len(seeds)} seed(s) per configuration: the 2 x SE noise rule rests on a standard "
            "deviation of 2 values, so every verdict here is indicative only. "
            f"{c.epochs} epochs x {c.epoch_steps} steps is a short budget: regularisers that "
            "slow fitting (dropout) are compared before they have converged. The decay grid "
            "is too coarse to decide the slope claim: with 2 decays per optimizer the best "
            "decay can only be one of 2 values, so slopes are 0 or +-1/decade. Run without "
            "--quick to decide the claims."))
    diverged = [r for r in records if r["status"] == "diverged"]
    if diverged:
        run.add_text("Diverged runs", "\n".join(f"- {r['key']} seed {r['seed']}"
                                                for r in diverged))
    run.data["splits"] = {"train": available, "validation": len(data[1][1]),
                          "test": len(data[2][1])}
    run.metrics.update({"sub_runs": len(records), "diverged": len(diverged),
                        "train_seconds": sum(r["metrics"].get("seconds", 0.0) for r in records)})


EXPERIMENT = runtime.Experiment(
    "dropout_vs_l2", experiment,
    defaults={"epochs": 20, "batch_size": 32, "learning_rate": 1e-3,
              "steps_per_execution": 100},
    quick={"epochs": 8, "epoch_steps": 50, "seeds_per_config": 2, "es_patience": 2,
           "train_sizes": ["100", "300"], "size_methods": ["none", "dropout"],
           "dropout_rates": ["0.5"], "l2_values": ["1e-3"], "combined_arm": False,
           "grid_learning_rates": ["1e-3", "1e-2"], "adamw_decays": ["3.16e-4", "3.16e-3"],
           "adam_l2_decays": ["3.16e-5", "3.16e-4"]},
    datasets=images.DATASETS)

if __name__ == "__main__":
    EXPERIMENT.launch()
