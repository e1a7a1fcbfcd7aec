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
