import pytest

from tests.experiments.helpers import run_experiment


@pytest.fixture(scope="session")
def softmax_run(tmp_path_factory):
    """One finished softmax_regression run (4 epochs), shared by read-only tests."""
    model_dir = str(tmp_path_factory.mktemp("softmax") / "run")
    proc = run_experiment("experiments.softmax_regression", f"--model_dir={model_dir}",
                          "--epochs=4", "--log_every_steps=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


@pytest.fixture(scope="session")
def init_gain_run(tmp_path_factory):
    """A tiny init_gain run, in-process: (model_dir, results). Its Part 2 is a 5-point sweep."""
    from experiments import init_gain

    model_dir = str(tmp_path_factory.mktemp("init_gain") / "run")
    results = init_gain.EXPERIMENT.run_local(
        model_dir, depth=8, deep_depth=8, width=32, activations=["tanh", "relu", "sigmoid"],
        train_grid="claims", epochs=2, probe_size=128, batch_size=128, learning_rate=0.05,
        deep_seeds=2)
    return model_dir, results
