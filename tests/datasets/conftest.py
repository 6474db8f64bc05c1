"""Fixtures for the dataset tests: the tiny MNIST set of ``tests/conftest.py`` written as IDX and as CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def idx_dir(mnist_files) -> Path:
    """A directory with the four tiny IDX files, gzipped and hyphen-spelt as the mirrors have them."""
    return mnist_files.write_idx()


@pytest.fixture
def csv_pair(mnist_files) -> tuple[Path, Path]:
    """The tiny set as the tutorial's two CSV files."""
    return mnist_files.write_csv_pair()
