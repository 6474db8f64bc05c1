"""Tests for the run figures: valid files, atomic writes, no leaked figures, matplotlib imported lazily."""

import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from nnexp.job.plots import (
    plot_confusion_matrix,
    plot_decision_boundary,
    plot_learning_curves,
    write_confusion_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_figure_leaks():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary files left behind"


def history(epochs: int, val: bool = True) -> dict[str, list[float]]:
    epoch = np.arange(1, epochs + 1)
    logs = {
        "train_loss": list(2.0 / epoch),
        "train_accuracy": list(1.0 - 0.5 / epoch),
        "epoch_seconds": [0.1] * epochs,
    }
    if val:
        logs |= {"val_loss": list(2.2 / epoch), "val_accuracy": list(1.0 - 0.6 / epoch)}
    return logs


@pytest.mark.parametrize("val", [True, False])
def test_learning_curves_write_a_png(tmp_path, val):
    path = plot_learning_curves(history(30, val=val), tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    assert_png(path)


def test_learning_curves_need_the_train_metrics(tmp_path):
    with pytest.raises(ValueError, match="train_accuracy"):
        plot_learning_curves({"train_loss": [1.0]}, tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_confusion_matrix_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, size=(10, 10)) + np.diag(rng.integers(900, 1100, size=10))
    path = plot_confusion_matrix(matrix, [str(digit) for digit in range(10)], tmp_path / "confusion.png")
    assert_png(path)


def test_confusion_matrix_rejects_a_mismatch_with_the_class_names(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b", "c"], tmp_path / "confusion.png")


def test_confusion_csv_content(tmp_path):
    path = write_confusion_csv(np.array([[5, 1], [2, 7]]), ["cat", "dog"], tmp_path / "confusion.csv")
    assert path.read_text() == "true\\predicted,cat,dog\ncat,5,1\ndog,2,7\n"
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.csv"]


def test_decision_boundary_predicts_once_on_the_whole_grid(tmp_path):
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]], dtype=np.float32)
    calls = []

    def predict(grid: np.ndarray) -> np.ndarray:
        calls.append(grid)
        return (grid[:, 0] > 1.0).astype(int)

    path = plot_decision_boundary(predict, x, np.array([0, 0, 1]), ["left", "right"], tmp_path / "db.png", 40)
    assert_png(path)
    assert len(calls) == 1
    assert calls[0].shape == (40**2, 2)
    assert calls[0].dtype == np.float32
    low, high = calls[0].min(axis=0), calls[0].max(axis=0)
    np.testing.assert_allclose(low, [-0.2, -0.1], rtol=1e-6)  # a 10% margin on each side
    np.testing.assert_allclose(high, [2.2, 1.1], rtol=1e-6)


def test_decision_boundary_grid_has_width_when_points_share_a_coordinate(tmp_path):
    x = np.array([[1.0, 3.0], [2.0, 3.0]])
    calls = []

    def predict(grid: np.ndarray) -> np.ndarray:
        calls.append(grid)
        return np.zeros(len(grid), dtype=int)

    plot_decision_boundary(predict, x, np.array([0, 0]), ["only"], tmp_path / "db.png", resolution=10)
    assert calls[0][:, 1].min() <= 2.0 and calls[0][:, 1].max() >= 4.0


def test_decision_boundary_rejects_inputs_that_are_not_2d_points(tmp_path):
    with pytest.raises(ValueError, match=r"x must have shape \(n_samples, 2\)"):
        plot_decision_boundary(
            lambda g: g[:, 0] > 0, np.zeros((4, 3)), np.zeros(4, int), ["a", "b"], tmp_path / "db.png"
        )
    assert list(tmp_path.iterdir()) == []


def test_decision_boundary_rejects_labels_outside_the_classes(tmp_path):
    with pytest.raises(ValueError, match=r"predict\(grid\) must be class indices in 0\.\.1, got 0\.\.2"):
        plot_decision_boundary(
            lambda g: np.arange(len(g)) % 3,
            np.zeros((4, 2)),
            np.zeros(4, int),
            ["a", "b"],
            tmp_path / "db.png",
            5,
        )


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "curves.nosuchformat"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="not supported"):
        plot_learning_curves(history(3), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_importing_plots_does_not_import_matplotlib():
    code = "import nnexp.job.plots, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_comparison_labels_are_whole_and_wrapped(tmp_path):
    from nnexp.job.plots import LABEL_WIDTH, plot_comparison, wrapped_labels

    common = "model=deep_sigmoid activation=sigmoid hidden_sizes=[25,50,25]"
    labels = [f"{common} learning_rate={rate}" for rate in ("0.01", "0.001")]
    wrapped = wrapped_labels(labels)
    assert [label.replace("\n", " ") for label in wrapped] == labels  # nothing cut
    assert all(len(line) <= LABEL_WIDTH for label in wrapped for line in label.splitlines())
    assert wrapped[0] != wrapped[1]
    assert plot_comparison(labels, [0.9, 0.8], None, "test_accuracy", tmp_path / "c.png").stat().st_size > 0
