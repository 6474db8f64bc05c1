"""``nnexp check``: every registered activation, loss and model against finite differences, and every optimizer
for a first step that lowers the loss: the built-ins and a project's own plugins, one line each."""

from __future__ import annotations

from pathlib import Path

from nnexp.commands.arguments import ArgumentParser
from nnexp.errors import NnexpError, report
from nnexp.plugin_check import KINDS, check_all, registries


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp check",
        description="Check every registered activation, loss and model (built-in, ./plugins, NNEXP_PLUGIN_PATH and "
        "installed nnexp.plugins entry points) against central finite differences in float64, and every optimizer "
        "for a first step that lowers a least-squares loss. One line per plugin; exit 1 if any fails.",
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=list(KINDS),
        metavar="KIND,...",
        help=f"what to check (default: {','.join(KINDS)})",
    )
    parser.add_argument(
        "--only", type=lambda text: [name.strip() for name in text.split(",")], default=[], metavar="NAME,..."
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights (default: 0)")
    args = parser.parse_args(argv)
    try:
        unknown = sorted(set(args.kinds) - set(KINDS))
        if unknown:
            raise NnexpError(f"--kinds: unknown kind {unknown[0]!r}; expected some of {', '.join(KINDS)}")
        from nnexp.plugins import load_plugins

        load_plugins(Path.cwd())
        chosen = [registry for kind, registry in registries().items() if kind in args.kinds]
        registered = {name for registry in chosen for name in registry.names()}
        missing = [name for name in dict.fromkeys(args.only) if name not in registered]
        if missing:
            raise NnexpError(
                f"--only: no registered {'/'.join(args.kinds)} named {', '.join(missing)}; "
                f"registered: {', '.join(sorted(registered))}"
            )
        results = []
        for result in check_all(args.kinds, args.only, args.seed):
            print(result.line(), flush=True)
            results.append(result)
    except NnexpError as exc:
        report(exc)
        return 1
    failed = [f"{result.kind} {result.name}" for result in results if result.outcome == "FAIL"]
    skipped = sum(result.outcome == "skip" for result in results)
    passed = len(results) - len(failed) - skipped
    print(f"{len(results)} checked: {passed} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        report(f"failed: {', '.join(failed)}")
        return 1
    return 0
