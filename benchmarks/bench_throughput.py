"""One MNIST epoch of a 784-512-10 ReLU/softmax MLP (cross-entropy, batch 128): nnexp against PyTorch on the CPU
and scikit-learn's MLPClassifier, alternating pair by pair, with the matrix-product peak measured in the same run.

Usage: python benchmarks/bench_throughput.py MNIST_DIR [--pairs N] [--threads T]
MNIST_DIR holds the four IDX files. PyTorch rows are skipped, with a note, when torch is not installed
(`pip install torch==2.13.0` takes a CPU build from this machine's disk). Prints a Markdown table. Not part of CI.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, Examples, Trainer
from nnexp.core.training import evaluate

HIDDEN, BATCH = 512, 128
RATES = {"rmsprop": 0.001, "adam": 0.001}


def matmul_peak(repeat: int = 50) -> float:
    """GFLOP/s of float32 products at the MLP's own shape, 128x784 @ 784x512; the best of ``repeat``."""
    rng = np.random.default_rng(0)
    a, b = rng.random((BATCH, 784), dtype=np.float32), rng.random((784, HIDDEN), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - started) / 20)
    return 2 * BATCH * 784 * HIDDEN / best / 1e9


def nnexp_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int) -> tuple[float, float]:
    """Seconds of one training epoch through nnexp's Trainer, and the test accuracy after it."""
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [HIDDEN], "initializer": "glorot_uniform"}).build(
        784, 10, loss, rng, np.float32
    )
    train = Examples(data["x_train"], loss.encode(data["y_train"], 10, np.float32), data["y_train"])
    test = Examples(data["x_test"], loss.encode(data["y_test"], 10, np.float32), data["y_test"])
    trainer = Trainer(1, BATCH)
    started = time.perf_counter()
    trainer.fit(network, loss, OPTIMIZERS.build({"name": optimizer, "learning_rate": RATES[optimizer]}), train, rng)
    seconds = time.perf_counter() - started
    return seconds, evaluate(network, loss, test)[1]


def torch_epoch(data: dict[str, np.ndarray], optimizer: str, seed: int) -> tuple[float, float]:
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    make = {
        "rmsprop": lambda p: torch.optim.RMSprop(p, lr=RATES["rmsprop"], alpha=0.9, eps=1e-7),
        "adam": lambda p: torch.optim.Adam(p, lr=RATES["adam"], eps=1e-7),
    }[optimizer]
    opt = make(model.parameters())
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"].astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    order = torch.randperm(len(x), generator=generator)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_dir")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    splits = DATASETS.build({"name": "mnist_idx", "path": args.mnist_dir, "val_size": 0}).load(np.random.default_rng(0))
    data = {
        "x_train": splits.x_train.astype(np.float32),
        "y_train": splits.y_train,
        "x_test": splits.x_test.astype(np.float32),
        "y_test": splits.y_test,
    }
    try:
        import torch

        torch.set_num_threads(args.threads)
        contenders: dict[str, Callable[..., tuple[float, float]]] = {"pytorch": torch_epoch}
        note = f"PyTorch {torch.__version__}, {args.threads} threads"
    except ImportError:
        contenders, note = {}, "PyTorch rows skipped: torch is not installed (pip install torch==2.13.0)"
    flops = 6 * (784 * HIDDEN + HIDDEN + HIDDEN * 10 + 10) * len(data["x_train"])
    with threadpool_limits(args.threads):
        peak = matmul_peak()
        print(f"matrix-product peak at 128x784 @ 784x512: {peak:.0f} GFLOP/s; {note}\n")
        print(
            "| optimizer | contender | median s | min s | max s | GFLOP/s | of peak | nnexp / contender, pair by pair "
            "| test accuracy (nnexp / contender) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for optimizer in RATES:
            others = dict(contenders)
            if optimizer == "adam":
                others["scikit-learn"] = sklearn_epoch
            for name, epoch in others.items():
                ours, theirs, accuracy = [], [], ([], [])
                for pair in range(args.pairs):
                    first, second = (nnexp_epoch, epoch) if pair % 2 == 0 else (epoch, nnexp_epoch)
                    results = {first: first(data, optimizer, pair), second: second(data, optimizer, pair)}
                    ours.append(results[nnexp_epoch][0])
                    theirs.append(results[epoch][0])
                    accuracy[0].append(results[nnexp_epoch][1])
                    accuracy[1].append(results[epoch][1])
                ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
                for label, seconds in (("nnexp", ours), (name, theirs)):
                    median = statistics.median(seconds)
                    print(
                        f"| {optimizer} | {label} | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} | "
                        f"{flops / median / 1e9:.0f} | {flops / median / 1e9 / peak:.0%} | "
                        f"{ratios if label != 'nnexp' else ''} | "
                        f"{statistics.fmean(accuracy[0 if label == 'nnexp' else 1]):.4f} |"
                    )


if __name__ == "__main__":
    main()
