"""The multilayer perceptron: dense layers with one activation, sized by the data."""

from __future__ import annotations

import itertools

import numpy as np

from nnexp.core.activations import ACTIVATIONS
from nnexp.core.initializers import INITIALIZERS
from nnexp.core.layers import Bias, Dense, Layer
from nnexp.core.losses import Loss
from nnexp.core.network import Sequential
from nnexp.errors import ParameterError, require
from nnexp.models.base import MODELS, Footprint, Model


@MODELS.register("mlp")
class MLP(Model):
    """Dense layers of ``hidden_sizes`` units with ``activation``, then one output unit per class.

    ``output_activation=null`` takes the loss's natural output: logits for ``cross_entropy`` (softmax is fused
    into the loss), sigmoid for ``mse``. ``input_activation`` puts a learned per-feature offset and that
    activation in front of the first dense layer, e.g. ``x -> tanh(x + b)``. ``use_bias=false`` drops the dense
    layers' biases.
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [64, 64],  # noqa: B006 - copied below, never mutated
        activation: str = "relu",
        output_activation: str | None = None,
        initializer: str = "glorot_uniform",
        use_bias: bool = True,
        input_activation: str | None = None,
    ) -> None:
        require(
            all(size >= 1 for size in hidden_sizes),
            "hidden_sizes",
            "must hold sizes >= 1",
            list(hidden_sizes),
        )
        self.hidden_sizes = list(hidden_sizes)
        self.activation = ACTIVATIONS.validate(activation, "activation")
        self.output_activation = output_activation and ACTIVATIONS.validate(output_activation, "output_activation")
        self.initializer = INITIALIZERS.validate(initializer, "initializer")
        self.use_bias = use_bias
        self.input_activation = input_activation and ACTIVATIONS.validate(input_activation, "input_activation")

    def build(
        self, n_inputs: int, n_outputs: int, loss: Loss, rng: np.random.Generator, dtype: type[np.floating]
    ) -> Sequential:
        output = self._output_activation(loss)
        layers: list[Layer] = []
        if self.input_activation:
            layers += [Bias(n_inputs, dtype), ACTIVATIONS.build({"name": self.input_activation})]
        sizes = [n_inputs, *self.hidden_sizes]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [self._dense(fan_in, fan_out, rng, dtype), ACTIVATIONS.build({"name": self.activation})]
        layers.append(self._dense(sizes[-1], n_outputs, rng, dtype))
        if output != "identity":
            layers.append(ACTIVATIONS.build({"name": output}))
        return Sequential(layers)

    def footprint(self, n_inputs: int, n_outputs: int, loss: Loss) -> Footprint:
        dense = list(itertools.pairwise([n_inputs, *self.hidden_sizes, n_outputs]))
        parameters = sum(fan_in * fan_out + fan_out * self.use_bias for fan_in, fan_out in dense)
        # Every dense layer keeps its output and, unless it is the network's first layer, its input gradient; an
        # activation other than the identity keeps both too.
        values = sum(fan_in + fan_out for fan_in, fan_out in dense) - n_inputs
        values += sum(_kept(self.activation, size) for size in self.hidden_sizes)
        values += _kept(self._output_activation(loss), n_outputs)
        if self.input_activation:
            parameters += n_inputs
            values += 2 * n_inputs + _kept(self.input_activation, n_inputs)  # the offset's output, the dense input grad
        return Footprint(parameters, values, f"hidden_sizes={self.hidden_sizes}")

    def check(self, loss: Loss) -> None:
        self._output_activation(loss)

    def _output_activation(self, loss: Loss) -> str:
        """The output activation to use with ``loss``; raises if the loss forbids the configured one."""
        output = self.output_activation or loss.default_output_activation
        allowed = loss.allowed_output_activations
        if allowed is not None and output not in allowed:
            raise ParameterError(
                "model.output_activation",
                f"must be null or {' or '.join(allowed)} with {type(loss).__name__}, which applies its own",
                output,
            )
        return output

    def _dense(self, fan_in: int, fan_out: int, rng: np.random.Generator, dtype: type[np.floating]) -> Dense:
        return Dense(fan_in, fan_out, rng, self.initializer, self.use_bias, dtype)


def _kept(activation: str, width: int) -> int:
    """Values per batch row that an activation layer of ``width`` units keeps: its output and input gradient."""
    return 0 if activation == "identity" else 2 * width
