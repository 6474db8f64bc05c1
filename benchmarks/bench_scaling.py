"""How nnexp's epoch time grows (goal 7 of issue 5): one MNIST training epoch of a 784-H-10 ReLU MLP (cross-entropy,
Adam, float32) versus hidden width H, versus training-set size, and versus batch size.

- width: H = 128 ... 2048, all 60,000 training images, batch 128;
- size: the first 10,000 ... 60,000 training images, H = 512, batch 128;
- batch: 1 ... 1024, H = 512, 60,000 images; batches below 16 time a fixed number of steps (``--steps``) over the
  first steps x batch images and scale the time up to 60,000 images.

Every round measures every configuration once, so slow drifts in machine load spread over all of them; the table
gives median, min and max over ``--repeat`` rounds. FLOPs are counted as 6 x parameters x samples (forward 2,
backward 4). Each epoch is ``Trainer.fit`` with one epoch (shuffled), timed by the wall clock; building the network
and loading the data are not timed.

Usage: python benchmarks/bench_scaling.py MNIST_DIR [--repeat N] [--steps S] [--threads T]
Prints one Markdown section to stdout, progress to stderr. Not part of CI.
"""

from __future__ import annotations

import nnexp  # noqa: F401 - before NumPy, so that OpenBLAS's idle threads sleep soon, as under `python -m nnexp`

# isort: split

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from harness import matmul_peak, mnist_parser, parse, progress, timed, until_quiet

from nnexp import DATASETS, LOSSES, MODELS, OPTIMIZERS, Examples, Trainer

WIDTHS = (128, 256, 512, 1024, 2048)
SIZES = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000)
BATCHES = (1, 4, 16, 64, 256, 1024)
HIDDEN, BATCH, SMALL_BATCH = 512, 128, 16


def parameters(hidden: int) -> int:
    return 784 * hidden + hidden + hidden * 10 + 10


@dataclass
class Case:
    """One configuration; ``seconds`` are per full epoch of ``samples`` images (scaled up when ``timed`` < samples)."""

    hidden: int
    samples: int
    batch: int
    timed: int
    seconds: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    discarded: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def flops(self) -> float:
        return 6 * parameters(self.hidden) * self.samples


def epoch(case: Case, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Seconds of one epoch over the first ``case.timed`` images, scaled to ``case.samples``."""
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [case.hidden], "activation": "relu"}).build(
        784, 10, loss, rng, np.float32
    )
    train = Examples(x[: case.timed], loss.encode(y[: case.timed], 10, np.float32), y[: case.timed])
    optimizer = OPTIMIZERS.build({"name": "adam", "learning_rate": 0.001})
    trainer = Trainer(1, case.batch, shuffle=True)
    started = time.perf_counter()
    trainer.fit(network, loss, optimizer, train, rng)
    return (time.perf_counter() - started) * case.samples / case.timed


def measure(case: Case, x: np.ndarray, y: np.ndarray, seed: int, max_others: float, retries: int) -> None:
    """Time one epoch of ``case``, measured again while other processes were busy (:func:`until_quiet`)."""
    seconds, others, discarded = until_quiet(
        lambda: timed(lambda: epoch(case, x, y, seed)), max_others, retries, f"H={case.hidden} batch={case.batch}"
    )
    case.seconds.append(seconds)
    case.others.append(others)
    case.discarded += discarded


def row(label: str, case: Case, first: Case, unit: float, work: bool = True) -> str:
    """A table row: median/min/max, samples/s, GFLOP/s, seconds per ``unit``, and the time (and work) relative to
    ``first``."""
    median = case.median
    relative = f"{median / first.median:.2f}x" + (f" ({case.flops / first.flops:.2f}x)" if work else "")
    return (
        f"| {label} | {median:.3f} | {min(case.seconds):.3f} | {max(case.seconds):.3f} | "
        f"{case.samples / median:,.0f} | {case.flops / median / 1e9:.0f} | {median / unit:.3f} | {relative} | "
        f"{max(case.others):.2f}{f' ({case.discarded} discarded)' if case.discarded else ''} |"
    )


def main() -> None:
    parser = mnist_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all configurations (default 3)")
    parser.add_argument("--steps", type=int, default=6000, help=f"steps timed for batches below {SMALL_BATCH}")
    args, conditions, threads = parse(parser)
    progress("loading MNIST ...")
    splits = DATASETS.build({"name": "mnist_idx", "path": args.mnist_dir, "val_size": 0}).load(np.random.default_rng(0))
    x, y = splits.x_train.astype(np.float32, copy=False), splits.y_train
    total = len(y)
    widths = [Case(hidden, total, BATCH, total) for hidden in WIDTHS]
    sizes = [Case(HIDDEN, size, BATCH, size) for size in SIZES if size <= total]
    batches = [
        Case(HIDDEN, total, batch, min(total, args.steps * batch) if batch < SMALL_BATCH else total)
        for batch in BATCHES
    ]
    cases = [*widths, *sizes, *batches]
    with threads:
        epoch(Case(HIDDEN, 2048, BATCH, 2048), x, y, seed=0)  # warm-up: first calls into BLAS and NumPy
        peak = 0.0
        for round_ in range(args.repeat):
            # once per round: one measurement can fall in a busy moment
            peak = max(peak, matmul_peak(BATCH, 784, HIDDEN, repeat=30))
            for number, case in enumerate(cases):
                measure(case, x, y, round_, args.max_others, args.retries)
                progress(
                    f"round {round_ + 1}/{args.repeat}, case {number + 1}/{len(cases)}: H={case.hidden} "
                    f"samples={case.samples} batch={case.batch}: {case.seconds[-1]:.3f} s, "
                    f"other processes {case.others[-1]:.2f} cores, {case.discarded} discarded so far"
                )

    head = "| median s | min s | max s | samples/s | GFLOP/s |"
    others = "other processes' CPU, cores (max of kept) |"
    out = [
        "## How the epoch time grows: width, training-set size, batch size (goal 7)",
        "",
        f"Hidden width H (784-H-10 ReLU, {total:,} images, batch {BATCH}):",
        "",
        f"| H (parameters) {head} s per million parameters | time (work) relative to H={WIDTHS[0]} | {others}",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(f"{c.hidden} ({parameters(c.hidden):,})", c, widths[0], parameters(c.hidden) / 1e6) for c in widths),
        "",
        f"Training-set size (the first N images, H={HIDDEN}, batch {BATCH}):",
        "",
        f"| images {head} s per 10k images | time (work) relative to {SIZES[0]:,} | {others}",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(f"{c.samples:,}", c, sizes[0], c.samples / 10_000) for c in sizes),
        "",
        f"Batch size (H={HIDDEN}, seconds per epoch of {total:,} images; batches below {SMALL_BATCH} time "
        f"{args.steps:,} steps over the first steps x batch images and scale up):",
        "",
        f"| batch | images timed {head} µs per step | time relative to batch {BATCHES[0]} | {others}",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(row(f"{c.batch} | {c.timed:,}", c, batches[0], c.samples / c.batch / 1e6, work=False) for c in batches),
        "",
        f"- Matrix-product peak measured in the same run (the best of each round's best of 30), float32 128x784 @ "
        f"784x{HIDDEN}: {peak:.0f} GFLOP/s. "
        "GFLOP/s counts 6 x parameters x images per epoch. In the last column the figure in brackets is the growth "
        "of the work (parameters x images); equal figures mean linear growth.",
        *conditions.report(
            f"{args.repeat} round(s) of {len(cases)} configurations, 784-H-10 ReLU MLP, softmax cross-entropy, "
            "float32, glorot_uniform, Adam at 0.001, MNIST from IDX (pixels / 255), shuffled",
            "epoch",
            sum(case.discarded for case in cases),
            [others for case in cases for others in case.others],
        ),
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
