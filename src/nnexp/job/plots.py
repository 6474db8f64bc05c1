"""Figures logged as artifacts: learning curves, confusion matrix, decision boundary, and a sweep's comparison."""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from nnexp.atomic import replacing

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MARKER_LIMIT = 50
LOG_SCALE_DECADES = 2.0
MIN_MARGIN = 1.0
COMPARISON_LIMIT = 40
#: Characters per line of a bar's label in a sweep's comparison; longer labels wrap onto more lines.
LABEL_WIDTH = 45


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend, imported here so ``import nnexp.job.plots`` stays cheap."""
    import matplotlib

    matplotlib.use("Agg")  # runs are headless; never try to open a window
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _figure(path: Path, figsize: tuple[float, float], ncols: int = 1) -> Iterator[tuple[Figure, Any]]:
    """A new figure and its axes; on exit the figure is written atomically to ``path`` and always closed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=figsize, layout="constrained")
    try:
        yield fig, axes
        with replacing(path, "wb") as file:
            fig.savefig(file, format=Path(path).suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)


def _check_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """``matrix`` as an array, after checking it is square with one row per class name."""
    matrix = np.asarray(matrix)
    n_classes = len(class_names)
    if matrix.shape != (n_classes, n_classes):
        raise ValueError(
            f"confusion matrix must have shape ({n_classes}, {n_classes}) for {n_classes} class names, "
            f"got {matrix.shape}"
        )
    return matrix


def _check_labels(labels: np.ndarray, n_samples: int, n_classes: int, what: str) -> np.ndarray:
    """``labels`` as an array, after checking it holds ``n_samples`` class indices below ``n_classes``."""
    labels = np.asarray(labels)
    if labels.shape != (n_samples,):
        raise ValueError(f"{what} must have shape ({n_samples},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{what} must be class indices in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _plot_metric(ax: Axes, history: Mapping[str, Sequence[float]], metric: str, legend_loc: str) -> None:
    """One panel: the train curve of ``metric`` and, when recorded, the val curve."""
    from matplotlib.ticker import MaxNLocator

    for split, style in (("train", "-"), ("val", "--")):
        values = history.get(f"{split}_{metric}")
        if values is None:
            continue
        marker = "o" if len(values) <= MARKER_LIMIT else None
        ax.plot(range(1, len(values) + 1), values, linestyle=style, marker=marker, markersize=4, label=split)
    ax.set(title=metric.capitalize(), xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # a fixed corner: loc="best" scans every point and takes seconds on long histories
    ax.legend(loc=legend_loc)


def plot_learning_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Loss and accuracy per epoch (train and, when present, val), two panels side by side."""
    missing = [key for key in ("train_loss", "train_accuracy") if key not in history]
    if missing:
        raise ValueError(f"history must have {' and '.join(missing)}, got keys {sorted(history)}")
    losses = np.concatenate(
        [np.asarray(history[key], dtype=float) for key in ("train_loss", "val_loss") if key in history]
    )
    losses = losses[np.isfinite(losses)]
    log_scale = losses.size > 0 and losses.min() > 0 and np.log10(losses.max() / losses.min()) > LOG_SCALE_DECADES
    with _figure(path, figsize=(10, 4), ncols=2) as (_, (loss_ax, accuracy_ax)):
        _plot_metric(loss_ax, history, "loss", legend_loc="upper right")
        _plot_metric(accuracy_ax, history, "accuracy", legend_loc="lower right")
        if log_scale:
            loss_ax.set_yscale("log")
    return Path(path)


def _text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    red, green, blue = rgba[:3]
    return "white" if 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5 else "black"


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Heat map of counts, true classes as rows, predicted as columns, each cell annotated."""
    matrix = _check_confusion(matrix, class_names)
    n_classes = len(class_names)
    side = max(4.5, 0.55 * n_classes + 2.0)  # cells stay wide enough for four-digit counts
    with _figure(path, figsize=(side + 1.0, side)) as (fig, ax):
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax, label="count", shrink=0.8)
        ticks = np.arange(n_classes)
        ax.set(
            title="Confusion matrix",
            xlabel="predicted class",
            ylabel="true class",
            xticks=ticks,
            yticks=ticks,
            xticklabels=class_names,
            yticklabels=class_names,
        )
        if max((len(name) for name in class_names), default=0) > 3:
            for label in ax.get_xticklabels():
                label.set(rotation=45, horizontalalignment="right", rotation_mode="anchor")
        for (row, column), count in np.ndenumerate(matrix):
            colour = _text_colour(image.cmap(image.norm(count)))
            ax.text(column, row, f"{count}", ha="center", va="center", color=colour, fontsize=9)
    return Path(path)


def write_confusion_csv(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """The same matrix as CSV: a header row 'true\\predicted,<names...>' then one row per true class."""
    matrix = _check_confusion(matrix, class_names)
    with replacing(path, "w") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, matrix.tolist(), strict=True):
            writer.writerow([name, *row])
    return Path(path)


@dataclass(frozen=True)
class Regions:
    """The class a network predicts over a grid covering 2-D points, with the points and their true classes: what
    :func:`draw_decision_boundary` needs, computed where the network is."""

    predicted: np.ndarray  # (resolution, resolution) class indices, rows along feature 1
    extent: tuple[float, float, float, float]  # the grid's feature 0 low and high, then feature 1's
    x: np.ndarray  # (n_samples, 2)
    y: np.ndarray  # (n_samples,) true class indices
    class_names: tuple[str, ...]


def decision_regions(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    resolution: int = 300,
) -> Regions:
    """The predicted class over a grid covering the 2-D points ``x``, with a margin around them.

    Parameters
    ----------
    predict : maps (n, 2) inputs, in the dtype of ``x``, to (n,) integer class labels; called once on the grid
    x : (n_samples, 2)
    y : (n_samples,) true class indices
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (n_samples, 2) with n_samples >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x must be finite, got NaN or infinite values")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    n_classes = len(class_names)
    y = _check_labels(y, x.shape[0], n_classes, "y")

    low, high = x.min(axis=0).astype(float), x.max(axis=0).astype(float)
    span = high - low
    # a zero span (all points share a coordinate) would give a grid of zero width
    margin = np.where(span > 0, 0.1 * span, MIN_MARGIN)
    low, high = low - margin, high + margin
    axis_0 = np.linspace(low[0], high[0], resolution)
    axis_1 = np.linspace(low[1], high[1], resolution)
    grid_0, grid_1 = np.meshgrid(axis_0, axis_1)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    grid = np.column_stack([grid_0.ravel(), grid_1.ravel()]).astype(dtype)
    predicted = _check_labels(predict(grid), grid.shape[0], n_classes, "predict(grid)")
    extent = (float(low[0]), float(high[0]), float(low[1]), float(high[1]))
    return Regions(predicted.reshape(resolution, resolution), extent, x, y, tuple(class_names))


def draw_decision_boundary(regions: Regions, path: Path) -> Path:
    """The predicted regions as a pale background, the points over them coloured by true class."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    n_classes = len(regions.class_names)
    base = colormaps["tab10" if n_classes <= 10 else "tab20"].colors
    palette = [base[label % len(base)] for label in range(n_classes)]
    with _figure(path, figsize=(7, 5.5)) as (_, ax):
        ax.imshow(
            regions.predicted,
            extent=regions.extent,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            cmap=ListedColormap(palette),
            vmin=-0.5,
            vmax=n_classes - 0.5,
            alpha=0.3,
        )
        size = 60 if len(regions.x) <= MARKER_LIMIT else 30  # a handful of toy points should stand out
        for label, (name, colour) in enumerate(zip(regions.class_names, palette, strict=True)):
            points = regions.x[regions.y == label]
            ax.scatter(
                points[:, 0],
                points[:, 1],
                color=colour,
                edgecolors="0.15",
                linewidths=0.6,
                s=size,
                label=name,
            )
        ax.set(title="Decision boundary", xlabel="feature 0", ylabel="feature 1")
        # outside the axes, so the legend never hides points or regions
        ax.legend(title="true class", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return Path(path)


def plot_decision_boundary(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    resolution: int = 300,
) -> Path:
    """Predicted class over a grid covering the 2-D points ``x``, the points coloured by true label ``y`` (see
    :func:`decision_regions`)."""
    return draw_decision_boundary(decision_regions(predict, x, y, class_names, resolution), path)


@dataclass(frozen=True)
class RunPlots:
    """What a run's plots show, as plain data that another process can draw."""

    folder: Path
    matrix: np.ndarray
    class_names: tuple[str, ...]
    history: dict[str, list[float]]
    regions: Regions | None  # for 2-D data


def draw_run_plots(plots: RunPlots) -> None:
    """Confusion matrix, learning curves and, for 2-D data, the decision boundary, as PNG files in ``plots.folder``;
    raises the OSError that stopped a write."""
    plots.folder.mkdir(exist_ok=True)
    plot_confusion_matrix(plots.matrix, plots.class_names, plots.folder / "confusion_matrix.png")
    plot_learning_curves(plots.history, plots.folder / "learning_curves.png")
    if plots.regions is not None:
        draw_decision_boundary(plots.regions, plots.folder / "decision_boundary.png")


def wrapped_labels(labels: Sequence[str]) -> list[str]:
    """Whole labels, wrapped at :data:`LABEL_WIDTH`: two configurations may differ only at their ends (``lr=0.01``
    against ``lr=0.001``), which a cut label would hide."""
    return [textwrap.fill(label, LABEL_WIDTH, break_on_hyphens=False, break_long_words=True) for label in labels]


def plot_comparison(
    labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None, metric: str, path: Path
) -> Path:
    """A sweep's jobs (or configurations, with ``errors`` their std over seeds) as horizontal bars, best on top."""
    if len(labels) != len(values) or (errors is not None and len(errors) != len(values)):
        raise ValueError(f"got {len(labels)} labels for {len(values)} values")
    shown = min(len(values), COMPARISON_LIMIT)
    wrapped = wrapped_labels(labels[:shown])
    lines = max((label.count("\n") + 1 for label in wrapped), default=1)
    height = 1.5 + (0.15 + 0.15 * lines) * shown
    with _figure(path, figsize=(10, height)) as (_, ax):
        positions = np.arange(shown)[::-1]
        ax.barh(positions, values[:shown], xerr=None if errors is None else errors[:shown], color="tab:blue", capsize=3)
        ax.set_yticks(positions, wrapped, fontsize=8)
        finite = [value for value in values[:shown] if np.isfinite(value)]
        if finite and min(finite) > 0:
            spread = max(finite) - min(finite)
            ax.set_xlim(max(0.0, min(finite) - max(spread, 0.01)), max(finite) + 0.25 * max(spread, 0.01))
        title = metric if errors is None else f"{metric}, mean ± std over seeds"
        title += "" if shown == len(values) else f" (best {shown} of {len(values)})"
        ax.set(title=title, xlabel=metric)
        ax.grid(axis="x", alpha=0.3)
    return Path(path)
