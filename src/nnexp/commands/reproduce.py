"""``nnexp reproduce``: run every tutorial preset for a few seeds and compare with the published figures."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nnexp.commands.arguments import ArgumentParser
from nnexp.errors import NnexpError, report
from nnexp.job.reproduction import (
    check_configs,
    check_writable,
    find_presets,
    run_preset,
    table,
    tracking_option,
    write_markdown,
)
from nnexp.tracking.store import resolve_uri
from nnexp.tracking.tracked_run import Tracker


def _integers(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:  # a seed run twice would count twice in the mean
        raise argparse.ArgumentTypeError(f"each seed once, got {', '.join(map(str, twice))} more than once")
    return seeds


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp reproduce",
        description="Run every tutorial preset of conf/experiment/ for several seeds and compare with the "
        "published figures; each run is a child of one MLflow parent run.",
    )
    parser.add_argument(
        "--seeds", type=_integers, default=[0, 1, 2], metavar="S,S,...", help="seeds to average over (0,1,2)"
    )
    parser.add_argument(
        "--only", type=lambda text: text.split(","), default=[], metavar="PRESET,...", help="run only these presets"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run, e.g. trainer.dtype=float64")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            check_writable(args.markdown)
        presets = find_presets(Path.cwd() / "conf", args.only)
        check_configs(presets, args.seeds, args.overrides)
        uri = resolve_uri(tracking_option(args.overrides, "uri"), Path.cwd())
        tracker = Tracker(uri, tracking_option(args.overrides, "experiment") or "nnexp")
        tags = {"nnexp_command": "reproduce", "seeds": args.seeds, "overrides": " ".join(args.overrides) or "(none)"}
        with tracker.start_run("reproduce", tags) as parent:
            for preset in presets:
                for seed in args.seeds:
                    run_preset(preset, seed, parent.run_id, args.overrides, tracker)
            summary = table(presets, args.seeds)
            if args.overrides:
                summary += f"\n\nOverrides applied to every run: `{' '.join(args.overrides)}`"
            parent.log_metrics({f"{p.name}.{p.metric}": p.mean for p in presets}, step=0)
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "reproduce.md"
                path.write_text(summary + "\n")
                parent.log_artifact(path)
    except NnexpError as exc:
        report(exc)
        return 1
    print(summary)
    if args.markdown:
        try:
            write_markdown(args.markdown, summary + "\n")
        except NnexpError as exc:
            report(exc)
            return 1
    return 0 if all(preset.passed for preset in presets) else 1
