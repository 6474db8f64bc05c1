"""Weight initializers: each draws a (fan_in, fan_out) matrix from an explicit generator."""

from __future__ import annotations

import numpy as np

from nnexp.core import Array
from nnexp.errors import PluginError
from nnexp.registry import Registry


class Initializer:
    """Draws a weight matrix of shape (fan_in, fan_out)."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        raise NotImplementedError


INITIALIZERS: Registry[Initializer] = Registry("initializer", Initializer, by_name_only=True)


def initial_weight(name: str, shape: tuple[int, int], rng: np.random.Generator, dtype: type[np.floating]) -> Array:
    """The weights initializer ``name`` draws for ``shape``, in ``dtype``. Raises :class:`PluginError` naming the
    initializer and its source unless they are real numbers of that shape, finite in ``dtype``: the layer would fail
    later with a bare NumPy error, or train to "loss became NaN", which blames the learning rate."""
    initializer = INITIALIZERS.build({"name": name})
    drawn = initializer(shape, rng)
    label = INITIALIZERS.label(type(initializer))
    if not isinstance(drawn, np.ndarray) or drawn.shape != shape:
        found = f"shape {drawn.shape}" if isinstance(drawn, np.ndarray) else f"a {type(drawn).__name__}"
        raise PluginError(f"{label} returned {found} for weights of shape {shape}; expected an array of that shape")
    if not (np.issubdtype(drawn.dtype, np.integer) or np.issubdtype(drawn.dtype, np.floating)):
        raise PluginError(f"{label} returned {drawn.dtype} weights; expected real numbers")
    with np.errstate(over="ignore"):
        weight = drawn.astype(dtype, copy=False)
    bad = np.argwhere(~np.isfinite(weight))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise PluginError(
            f"{label} returned {weight[where]} at {where} for weights of shape {shape} in {np.dtype(dtype).name}; "
            "weights must be finite numbers"
        )
    return weight


def _uniform(limit: float, shape: tuple[int, int], rng: np.random.Generator) -> Array:
    return rng.uniform(-limit, limit, size=shape)


@INITIALIZERS.register("glorot_uniform")
class GlorotUniform(Initializer):
    """Uniform on ±sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio, 2010); Keras's default."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return _uniform(np.sqrt(6.0 / sum(shape)), shape, rng)


@INITIALIZERS.register("glorot_normal")
class GlorotNormal(Initializer):
    """Normal with std sqrt(2 / (fan_in + fan_out))."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return rng.normal(0.0, np.sqrt(2.0 / sum(shape)), size=shape)


@INITIALIZERS.register("he_normal")
class HeNormal(Initializer):
    """Normal with std sqrt(2 / fan_in), suited to ReLU (He et al., 2015)."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return rng.normal(0.0, np.sqrt(2.0 / shape[0]), size=shape)


@INITIALIZERS.register("he_uniform")
class HeUniform(Initializer):
    """Uniform on ±sqrt(6 / fan_in)."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return _uniform(np.sqrt(6.0 / shape[0]), shape, rng)


@INITIALIZERS.register("lecun_normal")
class LecunNormal(Initializer):
    """Normal with std sqrt(1 / fan_in)."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return rng.normal(0.0, np.sqrt(1.0 / shape[0]), size=shape)


@INITIALIZERS.register("normal_fan_out")
class NormalFanOut(Initializer):
    """Normal with std 1/sqrt(fan_out): the 'Make Your Own Neural Network' tutorials' scheme."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return rng.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape)


@INITIALIZERS.register("standard_normal")
class StandardNormal(Initializer):
    """Normal with std 1, as ``np.random.randn`` in many hand-written tutorials."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return rng.standard_normal(size=shape)


@INITIALIZERS.register("zeros")
class Zeros(Initializer):
    """All zeros; only sensible for a single layer, since hidden units would stay identical."""

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> Array:
        return np.zeros(shape)
