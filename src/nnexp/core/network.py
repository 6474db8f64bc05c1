"""Sequential networks: forward through layers, backward in reverse, parameters by stable keys."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from nnexp.atomic import replacing
from nnexp.core import Array
from nnexp.core.layers import Layer


class Sequential:
    """A stack of layers; parameter keys read ``dense0.weight``, ``bias0.bias``, ``dense1.weight``, …"""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        counts: dict[str, int] = {}
        self.layer_names: list[str] = []
        for layer in self.layers:
            kind = type(layer).__name__.lower()
            self.layer_names.append(f"{kind}{counts.get(kind, 0)}")
            counts[kind] = counts.get(kind, 0) + 1
        self._flat = self._pack_parameters()
        self._parameters = [
            (f"{name}.{key}", param, layer.grads[key])
            for name, layer in zip(self.layer_names, self.layers, strict=True)
            for key, param in layer.params.items()
        ]

    def _pack_parameters(self) -> list[tuple[str, Array, Array]]:
        """Move all parameters of one kind (every ``weight``, every ``bias``) into one contiguous buffer.

        Layers keep views into the buffers, so an optimizer updates a whole kind with one vectorised operation
        instead of one per layer: per-sample SGD on small networks is dominated by that per-call cost.
        """
        members: dict[str, list[tuple[Layer, str]]] = {}
        for layer in self.layers:
            for key in layer.params:
                members.setdefault(key, []).append((layer, key))
        packed = []
        for kind, owners in members.items():
            arrays = [layer.params[key] for layer, key in owners]
            params = np.concatenate([array.ravel() for array in arrays])
            grads = np.zeros_like(params)
            offset = 0
            for (layer, key), array in zip(owners, arrays, strict=True):
                end = offset + array.size
                layer.params[key] = params[offset:end].reshape(array.shape)
                layer.grads[key] = grads[offset:end].reshape(array.shape)
                offset = end
            packed.append((kind, params, grads))
        return packed

    def forward(self, x: Array) -> Array:
        """Network output for a batch: (n_samples, n_features) -> (n_samples, n_outputs)."""
        return self.forward_above_first(self.layers[0].forward(x))

    def backward(self, grad_out: Array) -> None:
        """Fill every layer's gradients; the gradient with respect to the network's input is never needed."""
        self.layers[0].backward(self.backward_above_first(grad_out), input_grad=False)

    def forward_above_first(self, x: Array) -> Array:
        """The output of the layers after the first, given the first one's output ``x``."""
        for layer in self.layers[1:]:
            x = layer.forward(x)
        return x

    def backward_above_first(self, grad_out: Array) -> Array:
        """Fill the gradients of the layers after the first; returns the gradient with respect to the first one's
        output."""
        for layer in reversed(self.layers[1:]):
            grad_out = layer.backward(grad_out)
        return grad_out

    def parameters(self) -> Iterator[tuple[str, Array, Array]]:
        """``(key, parameter, gradient)`` triples, in layer order: ``dense0.weight``, ``dense0.bias``, …"""
        return iter(self._parameters)

    def packed_parameters(self) -> Iterator[tuple[str, Array, Array]]:
        """The same parameters as one flat ``(kind, parameters, gradients)`` triple per kind (``weight``, ``bias``).

        Updating these updates every layer; optimizers take either form, as their per-key state follows the keys.
        """
        return iter(self._flat)

    def state_dict(self) -> dict[str, Array]:
        return {key: param for key, param, _ in self.parameters()}

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Copy ``state`` into the parameters in place; keys and shapes must match exactly, or nothing changes."""
        own = self.state_dict()
        if set(state) != set(own):
            raise ValueError(f"state keys {sorted(state)} do not match the network's {sorted(own)}")
        for key, param in own.items():
            if state[key].shape != param.shape:
                raise ValueError(f"{key}: shape {state[key].shape} does not match the network's {param.shape}")
        for key, param in own.items():
            param[...] = state[key]

    @property
    def n_parameters(self) -> int:
        return sum(param.size for _, param, _ in self.parameters())

    @property
    def dtype(self) -> np.dtype:
        return next(self.parameters())[1].dtype

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the parameters to ``path`` as ``.npz`` atomically (a temporary file, then a rename)."""
        with replacing(path) as file:
            np.savez(file, **self.state_dict())

    def load(self, path: str | os.PathLike[str]) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.load_state_dict({key: data[key] for key in data.files})
