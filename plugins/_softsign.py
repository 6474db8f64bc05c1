"""A user activation: softsign, x / (1 + |x|). Rename this file to ``softsign.py`` to use it as
``model.activation=softsign``; files whose name starts with ``_`` are not imported, so it waits until then."""

from __future__ import annotations

import numpy as np

from nnexp import ACTIVATIONS, Activation


@ACTIVATIONS.register("softsign")
class Softsign(Activation):
    """Like tanh, but reaching its bounds polynomially: f(x) = x / (1 + |x|), f'(x) = 1 / (1 + |x|)²."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        # The arrays come from buffer() and output(), kept between batches, so a step allocates nothing; 1 + |x| is
        # all that backward needs.
        self._denominator = denominator = np.abs(x, out=self.buffer("denominator", x.shape, x.dtype))
        denominator += 1
        return np.divide(x, denominator, out=self.output(x))

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        grad = np.divide(grad_out, self._denominator, out=self.input_grad(grad_out))
        grad /= self._denominator
        return grad
