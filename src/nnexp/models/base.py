"""The model plugin interface: a config-only builder of a :class:`Sequential` network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnexp.core.losses import Loss
from nnexp.core.network import Sequential
from nnexp.registry import Registry


@dataclass(frozen=True)
class Footprint:
    """How many values a network holds, known before it is built, to estimate its memory.

    ``parameters`` counts its weights and biases; ``values_per_row`` counts the values its layers keep per row of a
    batch (outputs and input gradients, see :meth:`~nnexp.core.layers.Layer.buffer`); ``setting`` is the model's
    config field that sets its size, as ``field=value``, named when a run cannot fit.
    """

    parameters: int
    values_per_row: int
    setting: str


class Model:
    """Builds a network once the data's sizes and the loss are known."""

    def check(self, loss: Loss) -> None:
        """Raise :class:`~nnexp.errors.ParameterError` if this model cannot be trained with ``loss``."""

    def build(
        self, n_inputs: int, n_outputs: int, loss: Loss, rng: np.random.Generator, dtype: type[np.floating]
    ) -> Sequential:
        raise NotImplementedError

    def footprint(self, n_inputs: int, n_outputs: int, loss: Loss) -> Footprint | None:
        """The size of the network :meth:`build` would make, without making it; ``None`` (the default) when the
        model cannot say, and then its memory is not checked before it is built."""
        return None


MODELS: Registry[Model] = Registry("model", Model)
