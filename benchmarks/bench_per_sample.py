"""Per-sample SGD (batch_size=1): nnexp against faithful replicas of two tutorials' own loops, in one process,
alternating A B A B ... and giving the ratio pair by pair (goal 2 of issue 5).

a. 'Make Your Own Neural Network' (Tariq Rashid): 784-100-10 sigmoid, no biases, squared error, learning rate 0.3,
   one pass over the 60,000 MNIST training images in file order. The replica is the book's ``neuralNetwork`` class
   (column vectors, ``numpy.dot``, ``scipy.special.expit``, float64, its error backpropagation as printed) against
   the preset ``conf/experiment/mnist_csv_rashid.yaml`` on ``mnist_idx`` with ``scaling: offset``.
b. The two-moons tutorial: 2-25-50-25-2 sigmoid with biases, squared error on one-hot targets, per-sample SGD at
   learning rate 0.01 for 1000 epochs over the 1400 training points in the same order every epoch. The replica is a
   typical hand-written loop (lists of weights and biases, ``np.dot``, ``np.outer``, float64) against the preset
   ``conf/experiment/moons_deep_sigmoid.yaml``.

nnexp's settings are read from the presets (the dataset aside), so the benchmark follows them if they change. Each
pair starts both sides from the same initial weights, drawn by nnexp's initializer from the tutorial's distribution,
so accuracy differences come from the update rule and the precision only. Test accuracy is measured after training,
outside the timed part.

Usage: python benchmarks/bench_per_sample.py MNIST_DIR [--pairs N] [--moons-pairs N] [--epochs E] [--threads T]
Prints one Markdown section to stdout, progress to stderr. Not part of CI.
"""

from __future__ import annotations

import nnexp  # noqa: F401 - before NumPy, so that OpenBLAS's idle threads sleep soon, as under `python -m nnexp`

# isort: split

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special
import yaml
from harness import mnist_parser, parse, progress, timed, until_quiet

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, Examples, Splits, Trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
BOOK_ACCURACY, MOONS_ACCURACY = 0.9468, 0.9767


# --- nnexp's side: the presets, through the public API -------------------------------------------------------


def _option(group: str, option: str) -> dict[str, Any]:
    """A group option as a plugin config: a YAML preset in ``conf/<group>/`` over its plugin, or the plugin itself."""
    path = CONF / group / f"{option}.yaml"
    if not path.is_file():
        return {"name": option}
    node = yaml.safe_load(path.read_text()) or {}
    bases = [entry for entry in node.pop("defaults", []) if isinstance(entry, str) and entry != "_self_"]
    return {**_option(group, bases[0]), **node} if bases else {"name": option, **node}


def preset(name: str) -> dict[str, Any]:
    """The model, loss, optimizer and trainer settings of ``conf/experiment/<name>.yaml`` (its dataset is ignored)."""
    node = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    choices = {}
    for entry in node.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                choices[key.removeprefix("override ").strip("/")] = value
    settings: dict[str, Any] = {}
    for group in ("model", "loss", "optimizer"):
        if group not in choices:
            raise SystemExit(f"conf/experiment/{name}.yaml: expected an 'override /{group}: ...' default")
        settings[group] = {**_option(group, choices[group]), **node.get(group, {})}
    settings["trainer"] = {"shuffle": True, "dtype": "float32", **node.get("trainer", {})}
    return settings


@dataclass
class NnexpJob:
    """A network built from a preset with one seed, ready to train; ``weights``/``biases`` are its initial values."""

    settings: dict[str, Any]
    splits: Splits
    seed: int
    epochs: int
    engine: str = "numpy"
    weights: list[np.ndarray] = field(init=False)
    biases: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        trainer = self.settings["trainer"]
        self.dtype = np.dtype(trainer["dtype"]).type
        self.rng = np.random.default_rng(self.seed)
        self.loss = LOSSES.build(dict(self.settings["loss"]))
        self.network = MODELS.build(dict(self.settings["model"])).build(
            self.splits.n_features, self.splits.n_classes, self.loss, self.rng, self.dtype
        )
        state = self.network.state_dict()
        self.weights = [value.copy() for key, value in state.items() if key.endswith(".weight")]
        self.biases = [value.copy() for key, value in state.items() if key.endswith(".bias")]
        self.optimizer = OPTIMIZERS.build(dict(self.settings["optimizer"]))
        self.trainer = Trainer(self.epochs, trainer["batch_size"], trainer["shuffle"], self.engine)
        y = self.splits.y_train
        x = self.splits.x_train.astype(self.dtype, copy=False)
        self.train = Examples(x, self.loss.encode(y, self.splits.n_classes, self.dtype), y)

    def run(self) -> float:
        """Seconds of ``Trainer.fit`` over all epochs."""
        started = time.perf_counter()
        self.trainer.fit(self.network, self.loss, self.optimizer, self.train, self.rng)
        return time.perf_counter() - started

    def accuracy(self) -> float:
        predicted = self.network.forward(self.splits.x_test.astype(self.dtype, copy=False)).argmax(axis=1)
        return float(np.mean(predicted == self.splits.y_test))


# --- a. 'Make Your Own Neural Network', as printed in the book (float64, column vectors) -------------------------


class neuralNetwork:  # noqa: N801 - the book's name
    """The book's class, unchanged except that ``exact`` optionally applies the output sigmoid's derivative to the
    errors passed back (the control row); the book itself passes ``output_errors`` back as they are."""

    def __init__(self, inputnodes: int, hiddennodes: int, outputnodes: int, learningrate: float, exact: bool = False):
        self.inodes = inputnodes
        self.hnodes = hiddennodes
        self.onodes = outputnodes
        self.wih = np.random.normal(0.0, pow(self.inodes, -0.5), (self.hnodes, self.inodes))
        self.who = np.random.normal(0.0, pow(self.hnodes, -0.5), (self.onodes, self.hnodes))
        self.lr = learningrate
        self.activation_function = lambda x: scipy.special.expit(x)
        self.exact = exact

    def train(self, inputs_list, targets_list):  # noqa: ANN001, ANN201 - the book's signature
        inputs = np.array(inputs_list, ndmin=2).T
        targets = np.array(targets_list, ndmin=2).T
        hidden_inputs = np.dot(self.wih, inputs)
        hidden_outputs = self.activation_function(hidden_inputs)
        final_inputs = np.dot(self.who, hidden_outputs)
        final_outputs = self.activation_function(final_inputs)
        output_errors = targets - final_outputs
        if self.exact:
            hidden_errors = np.dot(self.who.T, output_errors * final_outputs * (1.0 - final_outputs))
        else:
            hidden_errors = np.dot(self.who.T, output_errors)
        self.who += self.lr * np.dot(
            (output_errors * final_outputs * (1.0 - final_outputs)), np.transpose(hidden_outputs)
        )
        self.wih += self.lr * np.dot((hidden_errors * hidden_outputs * (1.0 - hidden_outputs)), np.transpose(inputs))

    def query(self, inputs_list):  # noqa: ANN001, ANN201 - the book's signature
        inputs = np.array(inputs_list, ndmin=2).T
        hidden_outputs = self.activation_function(np.dot(self.wih, inputs))
        return self.activation_function(np.dot(self.who, hidden_outputs))


@dataclass
class BookJob:
    """The book's network, started from ``weights`` (nnexp's (fan_in, fan_out) layout, transposed here)."""

    weights: list[np.ndarray]
    learning_rate: float
    inputs: np.ndarray
    targets: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray
    exact: bool = False

    def __post_init__(self) -> None:
        hidden, output = self.weights
        self.net = neuralNetwork(hidden.shape[0], hidden.shape[1], output.shape[1], self.learning_rate, self.exact)
        # C order, as the book's numpy.random.normal arrays are; a transposed view would make every update strided.
        self.net.wih = np.ascontiguousarray(hidden.T, dtype=np.float64)
        self.net.who = np.ascontiguousarray(output.T, dtype=np.float64)

    def run(self) -> float:
        started = time.perf_counter()
        for inputs, targets in zip(self.inputs, self.targets, strict=True):
            self.net.train(inputs, targets)
        return time.perf_counter() - started

    def accuracy(self) -> float:
        outputs = self.net.query(self.test_inputs)  # the book queries one record at a time; the same maths
        return float(np.mean(np.argmax(outputs, axis=0) == self.test_labels))


# --- b. the two-moons tutorial, as a typical hand-written loop ----------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class MoonsJob:
    """Lists of weight matrices and bias vectors, one sample at a time, backprop layer by layer."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    learning_rate: float
    epochs: int
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        self.weights = [np.ascontiguousarray(w, dtype=np.float64) for w in self.weights]
        self.biases = [np.ascontiguousarray(b, dtype=np.float64) for b in self.biases]

    def run(self) -> float:
        weights, biases, lr = self.weights, self.biases, self.learning_rate
        started = time.perf_counter()
        for _ in range(self.epochs):
            for i in range(len(self.x)):
                activations = [self.x[i]]
                for W, b in zip(weights, biases, strict=True):
                    activations.append(sigmoid(np.dot(activations[-1], W) + b))
                out = activations[-1]
                delta = (out - self.y[i]) * out * (1 - out)
                for layer in range(len(weights) - 1, -1, -1):
                    a = activations[layer]
                    grad_W = np.outer(a, delta)
                    grad_b = delta
                    if layer > 0:
                        delta = np.dot(weights[layer], delta) * a * (1 - a)
                    weights[layer] -= lr * grad_W
                    biases[layer] -= lr * grad_b
        return time.perf_counter() - started

    def accuracy(self) -> float:
        a = self.x_test
        for W, b in zip(self.weights, self.biases, strict=True):
            a = sigmoid(np.dot(a, W) + b)
        return float(np.mean(a.argmax(axis=1) == self.y_test))


# --- the comparison ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    network: str
    contender: str
    seconds: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    steps: int = 0


def alternate(
    pairs: int, make: Callable[[int], dict[str, Any]], rows: dict[str, Row], label: str, max_others: float, retries: int
) -> int:
    """Run the jobs ``make(pair)`` returns, in rotating order, ``pairs`` times; first job first on even pairs.

    A pair during which other processes were busy is run again (:func:`until_quiet`); returns how many pairs were
    discarded.
    """
    discarded = 0
    for pair in range(pairs):

        def run_pair(pair: int = pair) -> tuple[dict[str, tuple[float, float, float]], float]:
            jobs = make(pair)
            names = list(jobs)
            results = {}
            for name in names if pair % 2 == 0 else names[1:] + names[:1]:
                seconds, others = timed(jobs[name].run)
                results[name] = (seconds, others, jobs[name].accuracy())
                progress(
                    f"{label} pair {pair + 1}/{pairs}: {name}: {seconds:.2f} s, test accuracy "
                    f"{results[name][2]:.4f}, other processes {others:.2f} cores"
                )
            return results, max(others for _, others, _ in results.values())

        results, _, again = until_quiet(run_pair, max_others, retries, f"{label} pair {pair + 1}")
        discarded += again
        for name, (seconds, others, accuracy) in results.items():
            rows[name].seconds.append(seconds)
            rows[name].others.append(others)
            rows[name].accuracy.append(accuracy)
    return discarded


def spread(values: list[float]) -> tuple[str, str, str]:
    return f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"


def table(rows: list[Row], reference: Row, published: float) -> list[str]:
    lines = []
    for row in rows:
        median, low, high = spread(row.seconds)
        per_step = statistics.median(row.seconds) / row.steps * 1e6
        if row is reference:
            ratios = ""
        else:
            pairwise = [theirs / ours for theirs, ours in zip(row.seconds, reference.seconds, strict=True)]
            ratios = ", ".join(f"{r:.2f}" for r in pairwise) + f" (median {statistics.median(pairwise):.2f}x)"
        accuracy = " / ".join(f"{100 * a:.2f}" for a in row.accuracy)
        mean = 100 * statistics.fmean(row.accuracy)
        lines.append(
            f"| {row.network} | {row.contender} | {median} | {low} | {high} | {per_step:.1f} | {ratios} | "
            f"{mean:.2f}% ({accuracy}) | {100 * published:.2f}% | {max(row.others):.2f} |"
        )
    return lines


def verdict(tutorial: Row, ours: Row, name: str, goal: float = 2) -> str:
    pairwise = [theirs / mine for theirs, mine in zip(tutorial.seconds, ours.seconds, strict=True)]
    speed = statistics.median(pairwise)
    gap = 100 * (statistics.fmean(ours.accuracy) - statistics.fmean(tutorial.accuracy))
    return (
        f"{name}: tutorial / nnexp time {speed:.2f}x (median of pairs, slowest pair {min(pairwise):.2f}x; goal >= "
        f"{goal:g}x: {'met' if speed >= goal else 'NOT met'}); test accuracy nnexp minus tutorial {gap:+.2f} points "
        f"(goal within 0.3: {'met' if abs(gap) <= 0.3 else 'NOT met'})"
    )


def main() -> None:
    parser = mnist_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs for the MNIST epoch (default 3)")
    parser.add_argument("--moons-pairs", type=int, default=1, help="alternating pairs for the moons run (default 1)")
    parser.add_argument("--epochs", type=int, default=None, help="moons epochs (default: the preset's, 1000)")
    parser.add_argument("--no-control", action="store_true", help="skip the book loop with the exact gradient")
    args, conditions, threads = parse(parser)

    rashid, moons = preset("mnist_csv_rashid"), preset("moons_deep_sigmoid")
    moons_epochs = args.epochs or moons["trainer"]["epochs"]
    rng = np.random.default_rng(0)
    progress("loading MNIST ...")
    mnist = DATASETS.build({"name": "mnist_idx", "path": args.mnist_dir, "scaling": "offset", "val_size": 0}).load(rng)
    raw = DATASETS.build({"name": "mnist_idx", "path": args.mnist_dir, "scaling": "none", "val_size": 0}).load(rng)
    # What the book computes per CSV record, done once for all records, in float64 as in the book.
    book_inputs = raw.x_train.astype(np.float64) / 255.0 * 0.99 + 0.01
    book_test = raw.x_test.astype(np.float64) / 255.0 * 0.99 + 0.01
    book_targets = np.zeros((len(raw.y_train), 10)) + 0.01
    book_targets[np.arange(len(raw.y_train)), raw.y_train] = 0.99
    del raw
    moons_data = DATASETS.build({"name": "moons"}).load(rng)
    moons_targets = np.eye(moons_data.n_classes)[moons_data.y_train]

    book_lr = rashid["optimizer"]["learning_rate"]
    mnist_rows = {
        "tutorial": Row("784-100-10 sigmoid, 1 MNIST epoch", "tutorial's loop (the book's code, float64)"),
        "nnexp": Row("", f"nnexp, preset mnist_csv_rashid ({rashid['trainer']['dtype']})"),
        "compiled": Row("", "nnexp, the same with trainer.engine=compiled"),
    }
    if not args.no_control:
        mnist_rows["control"] = Row("", "control: the book's loop with the exact gradient")

    def mnist_pair(pair: int) -> dict[str, Any]:
        ours = NnexpJob(rashid, mnist, seed=pair, epochs=rashid["trainer"]["epochs"])
        jobs: dict[str, Any] = {
            "tutorial": BookJob(ours.weights, book_lr, book_inputs, book_targets, book_test, mnist.y_test),
            "nnexp": ours,
            "compiled": NnexpJob(rashid, mnist, seed=pair, epochs=rashid["trainer"]["epochs"], engine="compiled"),
        }
        if not args.no_control:
            jobs["control"] = BookJob(ours.weights, book_lr, book_inputs, book_targets, book_test, mnist.y_test, True)
        return jobs

    moons_rows = {
        "tutorial": Row(
            f"2-25-50-25-2 sigmoid, {moons_epochs} moons epochs", "tutorial's loop (hand-written, float64)"
        ),
        "nnexp": Row("", f"nnexp, preset moons_deep_sigmoid ({moons['trainer']['dtype']})"),
        "compiled": Row("", "nnexp, the same with trainer.engine=compiled"),
    }

    def moons_pair(pair: int) -> dict[str, Any]:
        ours = NnexpJob(moons, moons_data, seed=pair, epochs=moons_epochs)
        lr = moons["optimizer"]["learning_rate"]
        theirs = MoonsJob(
            ours.weights,
            ours.biases,
            lr,
            moons_epochs,
            moons_data.x_train,
            moons_targets,
            moons_data.x_test,
            moons_data.y_test,
        )
        compiled = NnexpJob(moons, moons_data, seed=pair, epochs=moons_epochs, engine="compiled")
        return {"tutorial": theirs, "nnexp": ours, "compiled": compiled}

    with threads:
        # Outside the timed part: load the kernels from Numba's cache (or compile them, the first time).
        NnexpJob(moons, moons_data, seed=0, epochs=1, engine="compiled").run()
        discarded = alternate(args.pairs, mnist_pair, mnist_rows, "MNIST", args.max_others, args.retries)
        discarded += alternate(args.moons_pairs, moons_pair, moons_rows, "moons", args.max_others, args.retries)
    all_rows = [*mnist_rows.values(), *moons_rows.values()]
    for row in mnist_rows.values():
        row.steps = len(mnist.y_train) * rashid["trainer"]["epochs"]
    for row in moons_rows.values():
        row.steps = len(moons_data.y_train) * moons_epochs

    out = [
        "## Per-sample SGD against the tutorials' own loops (goal 2)",
        "",
        "| network | contender | median s | min s | max s | µs per sample (median) | tutorial / nnexp, pair by pair "
        "| test accuracy: mean (per pair) | published | other processes' CPU, cores (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *table(list(mnist_rows.values()), mnist_rows["nnexp"], BOOK_ACCURACY),
        *table(list(moons_rows.values()), moons_rows["nnexp"], MOONS_ACCURACY),
        "",
        f"- {verdict(mnist_rows['tutorial'], mnist_rows['nnexp'], 'MNIST')}.",
        f"- {verdict(moons_rows['tutorial'], moons_rows['nnexp'], 'Moons')}.",
        f"- {verdict(mnist_rows['tutorial'], mnist_rows['compiled'], 'MNIST, compiled', goal=4)}.",
        f"- {verdict(moons_rows['tutorial'], moons_rows['compiled'], 'Moons, compiled', goal=10)}.",
        "- Seconds are the training loop only (nnexp: `Trainer.fit`; the tutorials: their loops over the samples). "
        "Each pair starts both sides from the same initial weights (nnexp's `lecun_normal` / `normal_fan_out` draws, "
        "which are the tutorials' distributions); a pair's sides run back to back, the first side alternating.",
        "- The book's replica is given the records already parsed into float64 arrays (inputs x/255·0.99+0.01, "
        "targets 0.01/0.99); the book parses the CSV text of each record inside its loop, so the replica is faster "
        "than the book's program and the comparison stricter. It uses `scipy.special.expit`, as the book does.",
        "- The book's code passes `output_errors` back to the hidden layer without the output sigmoid's derivative; "
        "the replica keeps that, nnexp follows the exact gradient. The control row is the book's loop with that one "
        "factor added (float64), which separates the effect of the update rule from that of nnexp's float32.",
        *conditions.report(
            f"MNIST {args.pairs} pair(s) of one epoch (60,000 steps), moons {args.moons_pairs} pair(s) of "
            f"{moons_epochs} epochs (1400 steps each), both sides per-sample SGD at the presets' learning rates "
            f"({book_lr} and {moons['optimizer']['learning_rate']})",
            "pair",
            discarded,
            [others for row in all_rows for others in row.others],
        ),
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
