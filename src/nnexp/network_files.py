"""A trained network as two files, its layers as JSON and its weights as ``.npz``, checked when read back; and the
model that predicts from them, which :mod:`nnexp.serving` hands to MLflow.

Over 350 lines because the writer and the reader's checks of the two files are one format: each check sits beside
what writes the field it checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnexp.core import Array
from nnexp.core.activations import ACTIVATIONS, Activation, softmax
from nnexp.core.layers import Bias, Dense, Layer
from nnexp.core.losses import Loss
from nnexp.core.network import Sequential
from nnexp.errors import DataError, NnexpError
from nnexp.registry import config_parameters
from nnexp.schema import (
    MAX_CLASS_NAME,
    Fields,
    check_weights,
    inside,
    load_npz,
    npz_arrays,
    parse_json,
    printable,
    read_text,
    shown,
)

if TYPE_CHECKING:
    import pandas as pd

    from nnexp.datasets.base import Dataset

SPEC_FILE = "network.json"
WEIGHTS_FILE = "weights.npz"
FORMAT = 1
#: How outputs become probabilities: ``softmax`` of logits, or outputs ``normalize``\ d to sum to one.
PROBABILITY_RULES = ("softmax", "normalize")
DTYPES = ("float32", "float64")
#: The largest layer a network description may declare: far beyond any network trained here, and small enough
#: that sizes cannot overflow when multiplied.
MAX_UNITS = 2**24
#: The keys of each kind of layer in a network description, and those that are sizes, in and out.
LAYER_KEYS = {"dense": ("n_inputs", "n_outputs", "bias"), "bias": ("n_features",), "activation": ("name", "config")}
SIZES = {"dense": ("n_inputs", "n_outputs"), "bias": ("n_features",), "activation": ()}


@dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds a network without its Hydra config: layers, dtype, classes, and how inputs were made.

    ``layers`` holds one dict per layer: ``{"type": "dense", "n_inputs", "n_outputs", "bias"}``,
    ``{"type": "bias", "n_features"}`` or ``{"type": "activation", "name"}`` (plus ``"config"`` for an activation
    with constructor fields). ``image_shape`` and ``pixel_scaling`` are set for image data such as MNIST: the
    model takes the flattened image scaled by ``pixel_scaling`` (``unit``, ``offset`` or ``none``, see
    :class:`nnexp.datasets.mnist.Scaling`); the model never scales its inputs itself.
    """

    layers: list[dict[str, Any]]
    dtype: str
    class_names: list[str]
    probabilities: str
    image_shape: list[int] | None = None
    pixel_scaling: str | None = None
    format: int = field(default=FORMAT)

    @property
    def n_features(self) -> int:
        first = self.layers[0]
        return first["n_inputs"] if first["type"] == "dense" else first["n_features"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> NetworkSpec:
        """Parse :meth:`to_json`'s output, every field checked; raises :class:`DataError` naming ``source`` and the
        field if it is not one."""
        try:
            found = parse_json(text)
        except ValueError as exc:
            raise DataError(f"{source}: not an nnexp network description: {exc}") from None
        if not isinstance(found, dict):
            raise DataError(f"{source}: not an nnexp network description: a JSON object, found {shown(found)}")
        fields = Fields(source)
        if found.get("format", FORMAT) != FORMAT:
            raise DataError(f"{source}: network format {found['format']!r}; this nnexp reads format {FORMAT}")
        known = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(set(found) - set(known))
        fields.check(not unknown, "the network description", f"an object of {', '.join(known)}", unknown)
        width = check_layers(fields, fields.get(found, "layers"))
        fields.check(fields.get(found, "dtype") in DTYPES, "dtype", f"one of {', '.join(DTYPES)}", found["dtype"])
        names = fields.strings(fields.get(found, "class_names"), "class_names")
        fields.check(len(names) == width, "class_names", f"{width} names, one per output", names)
        fields.check(len(set(names)) == len(names), "class_names", "different names, one per class", names)
        for index, name in enumerate(names):
            fields.check(printable(name), f"class_names[{index}]", "a name without control characters", name)
            expected = f"at most {MAX_CLASS_NAME} characters"
            fields.check(len(name) <= MAX_CLASS_NAME, f"class_names[{index}]", expected, len(name))
        rule = fields.get(found, "probabilities")
        fields.check(rule in PROBABILITY_RULES, "probabilities", f"one of {', '.join(PROBABILITY_RULES)}", rule)
        check_output_layers(fields, found["layers"], rule)
        spec = cls(**found)
        if spec.image_shape is not None:
            shape = spec.image_shape
            valid = isinstance(shape, list) and len(shape) == 2
            valid = valid and all(fields.integer(side, "image_shape", 1, MAX_UNITS) for side in shape)
            expected = "rows and columns of the input images"
            fields.check(valid and math.prod(shape) == spec.n_features, "image_shape", expected, shape)
        from nnexp.datasets.mnist import Scaling

        scalings = [None, *(item.value for item in Scaling)]
        fields.check(spec.pixel_scaling in scalings, "pixel_scaling", f"one of {scalings}", spec.pixel_scaling)
        return spec

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each array :meth:`Sequential.save` writes for a network of this structure, by key."""
        shapes: dict[str, tuple[int, ...]] = {}
        counts = {"dense": 0, "bias": 0}
        for entry in self.layers:
            kind = entry["type"]
            if kind == "activation":
                continue
            name = f"{kind}{counts[kind]}"
            counts[kind] += 1
            if kind == "dense":
                shapes[f"{name}.weight"] = (entry["n_inputs"], entry["n_outputs"])
                if entry["bias"]:
                    shapes[f"{name}.bias"] = (entry["n_outputs"],)
            else:
                shapes[f"{name}.bias"] = (entry["n_features"],)
        return shapes

    def build(self) -> Sequential:
        """A network of this structure with zero weights; load the trained ones into it."""
        dtype = np.dtype(self.dtype).type
        rng = np.random.default_rng(0)  # unused: zero initialisation draws nothing
        layers: list[Layer] = []
        for entry in self.layers:
            kind = entry["type"]
            if kind == "dense":
                layers.append(Dense(entry["n_inputs"], entry["n_outputs"], rng, "zeros", entry["bias"], dtype))
            elif kind == "bias":
                layers.append(Bias(entry["n_features"], dtype))
            elif kind == "activation":
                layers.append(ACTIVATIONS.build({"name": entry["name"], **entry.get("config", {})}))
            else:
                raise DataError(f"unknown layer type {kind!r}")
        return Sequential(layers)


def check_layers(fields: Fields, layers: object) -> int:
    """Check the ``layers`` of a network description: types, sizes within :data:`MAX_UNITS`, each layer taking what
    the one before it gives; returns the number of outputs."""
    fields.check(isinstance(layers, list) and bool(layers), "layers", "a list of layers", layers)
    width = None
    for index, entry in enumerate(layers):  # type: ignore[arg-type]
        field = f"layers[{index}]"
        entry = fields.mapping(entry, field)
        kind = entry.get("type")
        fields.check(kind in LAYER_KEYS, f"{field}.type", f"one of {', '.join(LAYER_KEYS)}", kind)
        fields.check(width is not None or kind != "activation", f"{field}.type", "dense or bias first", kind)
        extra = sorted(set(entry) - set(LAYER_KEYS[kind]) - {"type"})
        fields.check(not extra, field, f"a {kind} layer of {', '.join(LAYER_KEYS[kind])}", extra)
        sizes = [
            fields.integer(fields.get(entry, f"{field}.{key}"), f"{field}.{key}", 1, MAX_UNITS) for key in SIZES[kind]
        ]
        if sizes:
            expected = f"{width}, the outputs of the layer before"
            fields.check(width is None or sizes[0] == width, f"{field}.{SIZES[kind][0]}", expected, sizes[0])
            width = sizes[-1]
        if kind == "dense":
            bias = fields.get(entry, f"{field}.bias")
            fields.check(isinstance(bias, bool), f"{field}.bias", "true or false", bias)
        if kind == "activation":
            fields.string(fields.get(entry, f"{field}.name"), f"{field}.name")
            fields.mapping(entry.get("config", {}), f"{field}.config")
    return width  # type: ignore[return-value]


def check_output_layers(fields: Fields, layers: list[dict[str, Any]], rule: str) -> None:
    """Refuse a softmax activation after the last dense or bias layer when ``rule`` applies the softmax itself: the
    probabilities would be softmaxed twice, and nnexp's writer never stores one (its softmax is in the loss)."""
    for index in range(len(layers) - 1, -1, -1):
        entry = layers[index]
        if entry["type"] != "activation":
            return
        if rule == "softmax" and entry["name"] == "softmax":
            expected = "another activation than softmax, which probabilities: softmax applies to the outputs itself"
            fields.fail(f"layers[{index}].name", expected, entry["name"])


def describe(
    network: Sequential, loss: Loss, class_names: Sequence[str], dataset: Dataset | None = None
) -> NetworkSpec:
    """The :class:`NetworkSpec` of a network built for ``loss`` on ``dataset``'s data.

    Raises :class:`NnexpError` for a layer this module cannot rebuild (only :class:`Dense`, :class:`Bias` and
    registered activations can be), or a loss whose probabilities are neither a softmax nor the outputs.
    """
    from nnexp.datasets.idx_format import N_PIXELS
    from nnexp.datasets.mnist import MnistDataset

    layers = [_describe_layer(layer) for layer in network.layers]
    n_outputs = next((entry["n_outputs"] for entry in reversed(layers) if entry["type"] == "dense"), None)
    if n_outputs != len(class_names):
        raise NnexpError(f"the network has {n_outputs} outputs but {len(class_names)} class names are given")
    image_shape = pixel_scaling = None
    if isinstance(dataset, MnistDataset) and network.layers and _n_inputs(layers[0]) == N_PIXELS:
        image_shape, pixel_scaling = [28, 28], dataset.scaling.value
    return NetworkSpec(
        layers=layers,
        dtype=np.dtype(network.dtype).name,
        class_names=[str(name) for name in class_names],
        probabilities=_probability_rule(loss),
        image_shape=image_shape,
        pixel_scaling=pixel_scaling,
    )


def _n_inputs(entry: Mapping[str, Any]) -> int:
    return entry["n_inputs"] if entry["type"] == "dense" else entry["n_features"]


def _describe_layer(layer: Layer) -> dict[str, Any]:
    kind = type(layer)
    if kind is Dense:
        weight = layer.params["weight"]
        return {
            "type": "dense",
            "n_inputs": weight.shape[0],
            "n_outputs": weight.shape[1],
            "bias": "bias" in layer.params,
        }
    if kind is Bias:
        return {"type": "bias", "n_features": layer.params["bias"].shape[0]}
    if isinstance(layer, Activation):
        name = next((name for name, cls in ACTIVATIONS.items() if cls is kind), None)
        if name is not None:
            entry: dict[str, Any] = {"type": "activation", "name": name}
            config = {}
            for parameter, _, _ in config_parameters(kind):
                if not hasattr(layer, parameter):
                    raise NnexpError(
                        f"activation '{name}' keeps no attribute '{parameter}', so it cannot be saved in a model"
                    )
                value = getattr(layer, parameter)
                config[parameter] = getattr(value, "value", value)  # an Enum by its value
            if config:
                entry["config"] = config
            return entry
    raise NnexpError(
        f"layer {kind.__module__}.{kind.__qualname__} cannot be saved in an MLflow model; "
        "nnexp saves Dense, Bias and registered activations"
    )


def _probability_rule(loss: Loss) -> str:
    """Which rule reproduces ``loss.probabilities``, found on a probe: softmax (logits) or the outputs themselves."""
    probe = np.array([[0.5, 0.25, 0.25], [-1.0, 0.0, 3.0]])
    found = np.asarray(loss.probabilities(probe.copy()))
    if found.shape == probe.shape and np.allclose(found, softmax(probe.copy())):
        return "softmax"
    if found.shape == probe.shape and np.allclose(found, probe):
        return "normalize"
    raise NnexpError(f"{type(loss).__name__}.probabilities is neither a softmax nor the outputs; cannot save the model")


def probabilities(outputs: Array, rule: str) -> np.ndarray:
    """Class probabilities from network outputs, as float64 rows summing to one.

    ``normalize`` clips negative outputs to zero and divides by the row sum; a row of zeros becomes uniform.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if rule == "softmax":
        return softmax(outputs.copy())
    clipped = np.clip(outputs, 0.0, None)
    totals = clipped.sum(axis=1, keepdims=True)
    uniform = np.full_like(clipped, 1.0 / clipped.shape[1])
    return np.divide(clipped, totals, out=uniform, where=totals > 0)


class NetworkModel:
    """The loaded model: what ``mlflow.pyfunc.load_model`` wraps, and ``get_raw_model()`` returns."""

    def __init__(self, network: Sequential, spec: NetworkSpec) -> None:
        self.network, self.spec = network, spec

    @property
    def columns(self) -> list[str]:
        return ["label", *(f"probability_{name}" for name in self.spec.class_names)]

    def probabilities(self, x: Any) -> np.ndarray:
        """``(n, n_classes)`` float64 probabilities of feature rows ``x`` (an array or a DataFrame)."""
        from nnexp.core.training import predict

        expected = f"rows of {self.spec.n_features} numbers (an array, a list of rows or a DataFrame)"
        try:
            rows = np.asarray(x.to_numpy() if hasattr(x, "to_numpy") else x)
            wide = rows.astype(np.float64)  # checked before the cast: 1e300 is finite, but not as float32
        except (TypeError, ValueError) as exc:
            raise DataError(f"expected {expected}, got a {type(x).__name__} that is not: {exc}") from None
        if rows.ndim != 2 or rows.shape[1] != self.spec.n_features:
            one_row = " (one row is [[...]])" if rows.shape == (self.spec.n_features,) else ""
            raise DataError(f"expected {expected}, got an input of shape {rows.shape}{one_row}")
        with np.errstate(over="ignore"):
            rows = wide.astype(self.network.dtype)
        bad = np.argwhere(~np.isfinite(rows))
        if len(bad):  # the network would answer NaN for the row, and argmax would call that class 0
            row, column = bad[0]
            kind = "not a finite number" if not np.isfinite(wide[row, column]) else f"too large for {rows.dtype}"
            raise DataError(f"row {row + 1}, column {column + 1}: {wide[row, column]} is {kind}")
        with np.errstate(over="ignore", invalid="ignore"):
            outputs = predict(self.network, rows)
        overflowed = np.flatnonzero(~np.isfinite(outputs).all(axis=1))
        if len(overflowed):  # finite inputs too large for the weights: argmax of NaN would call the row class 0
            raise DataError(
                f"row {overflowed[0] + 1}: the network's outputs overflow {rows.dtype}; "
                "its values are too large for this model, which expects inputs scaled as its training data was"
            )
        return probabilities(outputs, self.spec.probabilities)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """A DataFrame of the predicted ``label`` and one ``probability_<class>`` column per class."""
        import pandas as pd

        found = self.probabilities(model_input)
        labels = np.asarray(self.spec.class_names, dtype=object)[found.argmax(axis=1)]
        frame = pd.DataFrame(found, columns=self.columns[1:])
        frame.insert(0, "label", labels)
        return frame

    def get_raw_model(self) -> NetworkModel:
        return self


def load(data_path: str | Path) -> NetworkModel:
    """Rebuild the network saved in ``data_path`` (the model's ``data/nnexp``); reads no pickle, and nothing from
    outside the folder. The stored arrays' shapes are checked against the description before anything is built."""
    folder = Path(data_path)
    spec_path, weights = folder / SPEC_FILE, folder / WEIGHTS_FILE
    for path in (spec_path, weights):
        if path.exists() and not inside(path, folder):
            raise DataError(f"{path}: leads out of the model folder {folder}")
    try:
        text = read_text(spec_path)
    except OSError as exc:
        raise DataError(f"{spec_path}: cannot be read: {exc.strerror}") from None
    spec = NetworkSpec.from_json(text, str(spec_path))
    stored = {key: shape for key, (shape, _) in npz_arrays(weights).items()}
    expected = spec.weight_shapes()
    if stored != expected:
        wrong = sorted(key for key in stored.keys() | expected.keys() if stored.get(key) != expected.get(key))
        raise DataError(
            f"{weights}: arrays {', '.join(f'{key} {stored.get(key)}' for key in wrong)} do not match "
            f"{spec_path}, which needs {', '.join(f'{key} {expected.get(key)}' for key in wrong)}"
        )
    try:
        network = spec.build()
    except NnexpError as exc:  # e.g. an activation that a plugin registers, and the plugin is not loaded
        raise DataError(f"{spec_path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{spec_path}: malformed layer list: {type(exc).__name__}: {exc}") from None
    arrays = load_npz(weights)
    check_weights(weights, arrays, network.dtype, f"{spec_path.name}'s dtype", "model")
    network.load_state_dict(arrays)
    return NetworkModel(network, spec)
