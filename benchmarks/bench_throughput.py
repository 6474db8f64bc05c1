"""One MNIST epoch of a 784-512-10 ReLU/softmax MLP (cross-entropy, batch 128): nnexp's compiled engine against
PyTorch on the CPU, nnexp's NumPy engine and scikit-learn's MLPClassifier, alternating pair by pair, with the
matrix-product peak measured in the same run.

Each side trains in a process of its own, started once and kept for all its epochs, so that no library's thread
pools (PyTorch brings its own OpenMP runtime beside the one Numba uses) share a process with another's. The other
processes' CPU shown per pair is measured in the side's process while it trains.

A pair during which other processes used more than ``--max-others`` cores is run again, at most ``--retries``
times.

Usage: python benchmarks/bench_throughput.py MNIST_DIR [--pairs N] [--threads T] [--max-others C] [--retries R]
MNIST_DIR holds the four IDX files. PyTorch rows are skipped, with a note, when torch is not installed
(`pip install torch==2.13.0` takes a CPU build from this machine's disk). Prints one Markdown section to stdout,
progress to stderr. Not part of CI.
"""

from __future__ import annotations

import nnexp  # noqa: F401 - before NumPy, so that OpenBLAS's idle threads sleep soon, as under `python -m nnexp`

# isort: split

import argparse
import importlib.metadata
import importlib.util
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from harness import limit_threads, matmul_peak, mnist_parser, parse, progress, timed, until_quiet

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, Examples, Loss, Sequential, Trainer
from nnexp.core import engine
from nnexp.core.training import evaluate

HIDDEN, BATCH = 512, 128
SETTLE_SECONDS = 1.0
RATES = {"rmsprop": 0.001, "adam": 0.001}
Epoch = Callable[[dict[str, np.ndarray], str, int], tuple[float, float]]


def untrained(seed: int) -> tuple[Sequential, Loss, np.random.Generator]:
    """nnexp's network for ``seed`` before training, its loss, and the generator its Trainer then shuffles with."""
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [HIDDEN], "initializer": "glorot_uniform"}).build(
        784, 10, loss, rng, np.float32
    )
    return network, loss, rng


def nnexp_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int, engine: str = "numpy") -> tuple[float, float]:
    """Seconds of one training epoch through nnexp's Trainer, and the test accuracy after it."""
    network, loss, rng = untrained(seed)
    train = Examples(data["x_train"], loss.encode(data["y_train"], 10, np.float32), data["y_train"])
    test = Examples(data["x_test"], loss.encode(data["y_test"], 10, np.float32), data["y_test"])
    trainer = Trainer(1, BATCH, engine=engine)
    started = time.perf_counter()
    trainer.fit(network, loss, OPTIMIZERS.build({"name": optimizer, "learning_rate": RATES[optimizer]}), train, rng)
    seconds = time.perf_counter() - started
    return seconds, evaluate(network, loss, test)[1]


def compiled_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int) -> tuple[float, float]:
    """The same epoch with ``trainer.engine=compiled``."""
    return nnexp_epoch(data, optimizer, seed, engine="compiled")


def torch_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int) -> tuple[float, float]:
    """The same epoch in PyTorch, from nnexp's initial weights for ``seed`` and in its shuffled order, so that the
    test accuracies differ only by the two libraries' arithmetic."""
    import torch

    network, _, rng = untrained(seed)
    weights = network.state_dict()
    model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        for index, layer in ((0, model[0]), (1, model[2])):
            layer.weight.copy_(torch.from_numpy(weights[f"dense{index}.weight"].T))
            layer.bias.copy_(torch.from_numpy(weights[f"dense{index}.bias"]))
    make = {
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=RATES["rmsprop"], alpha=0.9, eps=1e-7),
        "adam": lambda p: torch.optim.Adam(p, lr=RATES["adam"], eps=1e-7),
    }[optimizer]
    opt = make(model.parameters())
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"].astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    order = torch.from_numpy(rng.permutation(len(x)))
    x, y = x[order], y[order]
    for start in range(0, len(x), BATCH):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[start : start + BATCH]), y[start : start + BATCH]).backward()
        opt.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    return seconds, float(np.mean(predicted == data["y_test"]))


def sklearn_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int) -> tuple[float, float]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        (HIDDEN,),
        solver="adam",
        batch_size=BATCH,
        max_iter=1,
        learning_rate_init=RATES["adam"],
        random_state=seed,
        epsilon=1e-7,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data["x_train"], data["y_train"])
    seconds = time.perf_counter() - started
    return seconds, float(model.score(data["x_test"], data["y_test"]))


def load(mnist_dir: str) -> dict[str, np.ndarray]:
    """MNIST's training and test images (float32, pixels / 255) and labels."""
    splits = DATASETS.build({"name": "mnist_idx", "path": mnist_dir, "val_size": 0}).load(np.random.default_rng(0))
    return {
        "x_train": splits.x_train.astype(np.float32),
        "y_train": splits.y_train,
        "x_test": splits.x_test.astype(np.float32),
        "y_test": splits.y_test,
    }


EPOCHS: dict[str, Epoch] = {
    "nnexp": compiled_epoch,
    "pytorch": torch_epoch,
    "nnexp numpy engine": nnexp_epoch,
    "scikit-learn": sklearn_epoch,
}
_side: dict[str, object] = {}


def _start_side(name: str, mnist_dir: str, threads: int, dense: bool) -> None:
    """Set up a side's process: its threads, MNIST, and for nnexp's compiled engine its kernels loaded (from Numba's
    cache, or compiled the first time), outside any timed part."""
    _side["limits"] = limit_threads(threads)
    _side["data"] = data = load(mnist_dir)
    if dense:
        engine.SPARSE_MAX_DENSITY = -1.0
    if name == "pytorch":
        import torch

        torch.set_num_threads(threads)
    if name == "nnexp":
        compiled_epoch({key: value[: 2 * BATCH] for key, value in data.items()}, "adam", 0)


def _measure(name: str, optimizer: str, seed: int) -> tuple[tuple[float, float], float]:
    """In a side's process: its epoch's seconds and test accuracy, and the cores other processes used meanwhile."""
    data = _side["data"]
    return timed(lambda: EPOCHS[name](data, optimizer, seed))  # type: ignore[arg-type]


def alternate(
    sides: dict[str, ProcessPoolExecutor], optimizer: str, name: str, args: argparse.Namespace
) -> tuple[dict[str, list[float]], int]:
    """``args.pairs`` pairs of epochs, nnexp compiled's and ``name``'s, nnexp first on even pairs; per side its
    seconds, test accuracies and other processes' cores, under ``"nnexp"`` and ``name``, and how many pairs were
    discarded."""
    kept: dict[str, list[float]] = {key: [] for key in ("nnexp", name, "nnexp accuracy", f"{name} accuracy", "others")}
    discarded = 0
    for pair in range(args.pairs):

        def run_pair(pair: int = pair) -> tuple[dict[str, tuple[float, float]], float]:
            order = ["nnexp", name] if pair % 2 == 0 else [name, "nnexp"]
            results, others = {}, []
            for side in order:
                # PyTorch's and scikit-learn's OpenMP threads spin for a while after their epoch, in their process,
                # on the same cores; each side starts after a pause.
                time.sleep(SETTLE_SECONDS)
                results[side], busy = sides[side].submit(_measure, side, optimizer, pair).result()
                others.append(busy)
                progress(
                    f"{optimizer} pair {pair + 1}/{args.pairs}: {side}: {results[side][0]:.2f} s, test accuracy "
                    f"{results[side][1]:.4f}, other processes {busy:.2f} cores"
                )
            return results, max(others)

        results, others, again = until_quiet(run_pair, args.max_others, args.retries, f"{optimizer} pair {pair + 1}")
        discarded += again
        kept["others"].append(others)
        for side, (seconds, accuracy) in results.items():
            kept[side].append(seconds)
            kept[f"{side} accuracy"].append(accuracy)
    return kept, discarded


def main() -> None:
    parser = mnist_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=5, help="pairs per optimizer and contender (default 5)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even where it is installed")
    parser.add_argument(
        "--dense",
        action="store_true",
        help="the compiled engine multiplies every input, zeros too, as for data without zeros",
    )
    args, conditions, threads = parse(parser, children=True)  # the sides' processes
    progress("loading MNIST ...")
    data = load(args.mnist_dir)
    names = ["nnexp numpy engine"]
    if args.no_torch or importlib.util.find_spec("torch") is None:
        note = "PyTorch rows skipped: torch is not installed (pip install torch==2.13.0) or --no-torch"
    else:
        names.insert(0, "pytorch")
        note = f"PyTorch {importlib.metadata.version('torch')} with `torch.set_num_threads({args.threads})`"
    flops = 6 * (784 * HIDDEN + HIDDEN + HIDDEN * 10 + 10) * len(data["x_train"])
    density = float(np.count_nonzero(data["x_train"])) / data["x_train"].size
    rows, kept_others, discarded = [], [], 0
    with threads:
        peak = matmul_peak(BATCH, 784, HIDDEN, repeat=50)
        progress(f"matrix-product peak at {BATCH}x784 @ 784x{HIDDEN}: {peak:.0f} GFLOP/s")
        progress("starting a process per side ...")
        spawn = multiprocessing.get_context("spawn")
        sides = {
            name: ProcessPoolExecutor(1, spawn, _start_side, (name, args.mnist_dir, args.threads, args.dense))
            for name in ["nnexp", *names, "scikit-learn"]
        }
        try:
            for optimizer in RATES:
                for name in names + (["scikit-learn"] if optimizer == "adam" else []):
                    kept, again = alternate(sides, optimizer, name, args)
                    discarded += again
                    kept_others += kept["others"]
                    ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(kept["nnexp"], kept[name], strict=True))
                    for label in ("nnexp", name):
                        seconds = kept[label]
                        median = statistics.median(seconds)
                        shown = f"nnexp compiled (against {name})" if label == "nnexp" else name
                        rows.append(
                            f"| {optimizer} | {shown} | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} | "
                            f"{flops / median / 1e9:.0f} | {flops / median / 1e9 / peak:.0%} | "
                            f"{ratios if label != 'nnexp' else ''} | "
                            f"{statistics.fmean(kept[f'{label} accuracy']):.4f} | {max(kept['others']):.2f} |"
                        )
        finally:
            for side in sides.values():
                side.shutdown()
    out = [
        "## Throughput: one MNIST epoch of the 784-512-10 MLP against PyTorch and scikit-learn (goal 1)",
        "",
        "| optimizer | contender | median s | min s | max s | GFLOP/s | of peak | nnexp / contender, pair by pair "
        "| test accuracy (mean) | other processes' CPU, cores (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- Matrix-product peak measured in the same run (the best of 50), float32 {BATCH}x784 @ 784x{HIDDEN}: "
        f"{peak:.0f} GFLOP/s. GFLOP/s counts 6 x parameters x images per epoch (the products of a dense network's "
        "forward pass, weight gradients and input gradients), whatever a contender skips: no contender computes the "
        "first layer's input gradient, which is a third of that count, and nnexp's compiled engine multiplies only "
        f"the non-zero pixels in the first layer ({density:.0%} of them here"
        f"{'; not in this run: --dense' if args.dense else ''}), so its share of the peak can pass 100%. Seconds "
        "are the training epoch only (building the network, and the test accuracy after it, are not timed). "
        f"{note}.",
        *conditions.report(
            f"784-{HIDDEN}-10 ReLU MLP, softmax cross-entropy, float32 data, one epoch of the {len(data['y_train']):,} "
            f"MNIST training images (IDX, pixels / 255), shuffled, batch {BATCH}; optimizers RMSprop (rho 0.9) and "
            f"Adam (beta 0.9/0.999), both at learning rate {RATES['adam']} with epsilon 1e-7; nnexp (Trainer, "
            "glorot_uniform) against PyTorch (both optimizers, from nnexp's initial weights and in nnexp's shuffled "
            "order, so the accuracies compare arithmetic alone) and scikit-learn's MLPClassifier (Adam only, "
            "max_iter=1, its own initialisation and defaults otherwise, L2 alpha 1e-4 included); "
            f"{args.pairs} alternating pair(s) per optimizer and contender, nnexp first on even pairs, each side in a "
            "process of its own",
            "pair",
            discarded,
            kept_others,
        ),
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
