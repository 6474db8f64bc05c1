"""``nnexp ui``: MLflow's UI on the store nnexp uses, with the address of the experiment's runs table."""

from __future__ import annotations

import socket
import sys
import urllib.parse

from nnexp.children import run_group
from nnexp.commands.arguments import ArgumentParser, add_store_options
from nnexp.errors import Interrupted, NnexpError, report


def check_address(host: str, port: int) -> None:
    """Refuse an address the UI cannot listen on (a port in use, a host that is none of this machine's) before
    printing where to open it: ``mlflow ui`` would say so in its log and still exit 0."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = str(exc.strerror or exc).split(" (while attempting")[0]  # create_server appends the address
        raise NnexpError(f"--host {host} --port {port}: cannot listen there ({reason})") from None


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="nnexp ui",
        description="Start `mlflow ui` on the store nnexp logs to and print the address of the experiment's runs "
        "table in the Model training view (MLflow 3 would open its GenAI view). Against a tracking server, print "
        "its address only. Ctrl-C stops the UI.",
    )
    add_store_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    parser.add_argument(
        "--sweep",
        metavar="RUN_ID|last",
        help="open the runs table on this sweep's children, its objective and swept params as columns, best first; "
        "'last' is the newest sweep",
    )
    args = parser.parse_args(argv)
    from nnexp.tracking.store import ui_url
    from nnexp.tracking.tables import find_sweep, open_experiment, reap_store

    try:
        if not 0 < args.port < 65536:
            raise NnexpError(f"--port must be in 1..65535, got {args.port}")
        tracker = open_experiment(args.uri, args.experiment)
        reap_store(tracker.client)
        view = None
        if args.sweep:
            view = find_sweep(tracker.client, tracker.experiment_id, args.sweep).info.run_id
            if not tracker.saved_view(view):
                raise NnexpError(
                    f"--sweep {args.sweep}: experiment '{args.experiment}' has no view of run {view}'s children "
                    "(a sweep saves one when it ends)"
                )
        if urllib.parse.urlparse(tracker.uri).scheme not in ("http", "https"):
            check_address(args.host, args.port)
    except NnexpError as exc:
        report(exc)
        return 1
    if urllib.parse.urlparse(tracker.uri).scheme in ("http", "https"):
        print(f"{tracker.uri} is a tracking server: open {ui_url(tracker.uri, tracker.experiment_id, view=view)}")
        return 0
    shown = "127.0.0.1" if args.host == "0.0.0.0" else args.host
    page = ui_url(f"http://{shown}:{args.port}", tracker.experiment_id, view=view)
    print(f"open {page} (Ctrl-C stops the UI)", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.uri]
    command += ["--host", args.host, "--port", str(args.port)]
    try:
        return run_group(command)
    except KeyboardInterrupt as exc:  # how the UI is meant to stop, not an error; its server and workers have ended
        return Interrupted.of(exc).exit_code
