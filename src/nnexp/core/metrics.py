"""Classification metrics over integer labels."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of ``predicted`` labels equal to ``labels``."""
    return float(np.mean(labels == predicted)) if labels.size else float("nan")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns: (n_classes, n_classes)."""
    cells = labels.astype(np.int64) * n_classes + predicted  # int64: uint8 labels would wrap around
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
