"""Every MNIST tutorial preset runs end to end through the CLI on a small slice of the real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnexp.datasets.mnist_download import convert_to_csv

REPO = Path(__file__).resolve().parents[1]
MAX_TRAIN = 2000
#: Raw pixels at learning rate 2.0 take longer to settle: 29% test accuracy after 10,000 images, 86% after 20,000.
MAX_TRAIN_OF = {"mnist_tanh_softmax_tutorial": 20000}
PRESETS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("mnist_*.yaml"))

@pytest.fixture(scope="module")
def csv_dir(real_mnist, tmp_path_factory) -> Path:
    return convert_to_csv(real_mnist, tmp_path_factory.mktemp("mnist_csv"))[0].parent


@pytest.mark.parametrize("preset", PRESETS)
def test_mnist_preset_smoke_run(project, real_mnist, csv_dir, preset):
    dataset = "mnist_csv" if "csv" in preset else "mnist_idx"
    if dataset == "mnist_idx":
        data = (f"dataset.path={real_mnist}",)
    else:
        data = (f"dataset.train_path={csv_dir / 'mnist_train.csv'}", f"dataset.test_path={csv_dir / 'mnist_test.csv'}")
    max_train = MAX_TRAIN_OF.get(preset, MAX_TRAIN)
    slices = (f"dataset.max_train={max_train}", "dataset.max_test=500")
    result = project.run(f"experiment={preset}", *data, *slices, "trainer.epochs=1", timeout=600)
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == dataset
    assert run.data.metrics["test_accuracy"] > 0.5
    assert float(run.data.params["dataset.max_train"]) == max_train
