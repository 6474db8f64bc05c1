"""The model plugin interface: a config-only builder of a :class:`Sequential` network."""

from __future__ import annotations

import numpy as np

from nnexp.core.losses import Loss
from nnexp.core.network import Sequential
from nnexp.registry import Registry


class Model:
    """Builds a network once the data's sizes and the loss are known."""

    def check(self, loss: Loss) -> None:
        """Raise :class:`~nnexp.errors.ParameterError` if this model cannot be trained with ``loss``."""

    def build(
        self, n_inputs: int, n_outputs: int, loss: Loss, rng: np.random.Generator, dtype: type[np.floating]
    ) -> Sequential:
        raise NotImplementedError


MODELS: Registry[Model] = Registry("model", Model)
