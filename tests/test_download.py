"""`nnexp data mnist`: downloads from local mirrors on 127.0.0.1, checksums, fallback, atomic files, CSV conversion."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nnexp.atomic import replacing
from nnexp.commands import data as command
from nnexp.datasets import mnist_download as download
from nnexp.datasets.csv_format import read_csv
from nnexp.datasets.mnist import default_mnist_dir
from nnexp.schema import sha256_of


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


IMAGES = (np.arange(12 * 28 * 28).reshape(12, 28, 28) * 7 % 256).astype(np.uint8)
LABELS = (np.arange(12) * 3 % 10).astype(np.uint8)
#: Tiny stand-ins for the four archives: 8 training and 4 test images.
ARCHIVES = {
    "train-images-idx3-ubyte.gz": idx_gz(IMAGES[:8], 0x803),
    "train-labels-idx1-ubyte.gz": idx_gz(LABELS[:8], 0x801),
    "t10k-images-idx3-ubyte.gz": idx_gz(IMAGES[8:], 0x803),
    "t10k-labels-idx1-ubyte.gz": idx_gz(LABELS[8:], 0x801),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Mirror:
    """An HTTP server on 127.0.0.1 (port chosen by the OS) serving ``files``; it records every path asked for."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                mirror.requests.append(name)
                if name not in mirror.files:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(mirror.files[name])))
                self.end_headers()
                self.wfile.write(mirror.files[name])

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        # A short poll keeps shutdown() quick; the default waits up to half a second per server.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch) -> Iterator[Callable[[dict[str, bytes]], Mirror]]:
    """Start local mirrors; the accepted checksums become those of the tiny archives, and no proxy is used."""
    monkeypatch.setattr(download, "CHECKSUMS", {name: (sha256(data),) for name, data in ARCHIVES.items()})
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    mirrors: list[Mirror] = []

    def start(files: dict[str, bytes]) -> Mirror:
        mirrors.append(Mirror(files))
        return mirrors[-1]

    yield start
    for mirror in mirrors:
        mirror.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if ".partial" in path.name)


def test_downloads_and_verifies_the_four_files(serve, tmp_path, capsys):
    mirror = serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path / "mnist"), "--mirror", mirror.url]) == 0
    for name, data in ARCHIVES.items():
        assert (tmp_path / "mnist" / name).read_bytes() == data
    assert sorted(mirror.requests) == sorted(ARCHIVES)
    assert leftovers(tmp_path / "mnist") == []
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == list(download.FILES)
    assert all("checksum ok" in line for line in lines[:4])
    assert lines[4] == f"MNIST is ready in {tmp_path / 'mnist'}"


def test_a_corrupted_file_is_rejected_and_nothing_is_left_behind(serve, tmp_path, capsys):
    corrupted = {**ARCHIVES, "train-labels-idx1-ubyte.gz": ARCHIVES["train-labels-idx1-ubyte.gz"] + b"x"}
    mirror = serve(corrupted)
    assert command.main(["mnist", str(tmp_path), "--mirror", mirror.url]) == 1
    name = "train-labels-idx1-ubyte.gz"
    expected, actual = sha256(ARCHIVES[name]), sha256(corrupted[name])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {name}: checksum mismatch: expected SHA-256 {expected}, got {actual} from {mirror.url}{name}"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_a_failing_mirror_falls_back_to_the_next_and_is_then_tried_last(serve, tmp_path, capsys):
    empty, full = serve({}), serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path), "--mirror", empty.url, "--mirror", full.url]) == 0
    assert empty.requests == ["train-images-idx3-ubyte.gz"]
    assert sorted(full.requests) == sorted(ARCHIVES)
    assert (
        f"train-images-idx3-ubyte.gz: {empty.url}train-images-idx3-ubyte.gz: HTTP 404 Not Found; trying the next mirror"
        in (capsys.readouterr().err.splitlines())
    )


def test_a_mirror_with_a_bad_copy_falls_back_to_a_good_one(serve, tmp_path):
    bad = serve({name: data[::-1] for name, data in ARCHIVES.items()})
    good = serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path), "--mirror", bad.url, "--mirror", good.url]) == 0
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes() == ARCHIVES["t10k-labels-idx1-ubyte.gz"]
    assert leftovers(tmp_path) == []


def test_files_already_present_are_not_downloaded_again(serve, tmp_path, capsys):
    for name, data in ARCHIVES.items():
        (tmp_path / name).write_bytes(data)
    mirror = serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path), "--mirror", mirror.url]) == 0
    assert mirror.requests == []
    assert capsys.readouterr().err.count("already present, checksum ok") == 4


def test_a_present_file_with_the_wrong_checksum_is_replaced(serve, tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not mnist")
    mirror = serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path), "--mirror", mirror.url]) == 0
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes() == ARCHIVES["t10k-images-idx3-ubyte.gz"]


def test_csv_option_writes_the_tutorials_files(serve, tmp_path):
    mirror = serve(ARCHIVES)
    assert command.main(["mnist", str(tmp_path), "--csv", "--mirror", mirror.url]) == 0
    train_text = "".join(
        ",".join(map(str, [label, *image.ravel().tolist()])) + "\n"
        for image, label in zip(IMAGES[:8], LABELS[:8], strict=True)
    )
    assert (tmp_path / "mnist_train.csv").read_text() == train_text
    images, labels = read_csv(tmp_path / "mnist_test.csv")
    np.testing.assert_array_equal(images, IMAGES[8:].reshape(4, -1))
    np.testing.assert_array_equal(labels, LABELS[8:])
    assert leftovers(tmp_path) == []


def test_convert_to_csv_reads_either_spelling_and_returns_the_paths(tmp_path):
    for name, data in ARCHIVES.items():
        (tmp_path / name.replace("-idx", ".idx").removesuffix(".gz")).write_bytes(gzip.decompress(data))
    written = download.convert_to_csv(tmp_path, tmp_path / "csv")
    assert written == [tmp_path / "csv" / "mnist_train.csv", tmp_path / "csv" / "mnist_test.csv"]
    images, labels = read_csv(written[0])
    np.testing.assert_array_equal(images, IMAGES[:8].reshape(8, -1))
    np.testing.assert_array_equal(labels, LABELS[:8])


def test_no_network_fails_fast_saying_where_to_put_the_files(serve, tmp_path, capsys):
    url = closed_port_url()
    started = time.monotonic()
    assert command.main(["mnist", str(tmp_path), "--mirror", url]) == 1
    assert time.monotonic() - started < 2
    message = capsys.readouterr().err.splitlines()[-1]
    assert message == (
        f"error: cannot download train-images-idx3-ubyte.gz ({url}train-images-idx3-ubyte.gz: connection refused); "
        "put the files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz into {tmp_path} by hand and run again"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["nowhere", "file:///etc/", "ftp://127.0.0.1/mnist/", "data:,x", "http://", "javascript:alert(1)", "//host/x"],
)
def test_a_mirror_must_be_an_http_or_https_url(tmp_path, capsys, url):
    assert command.main(["mnist", str(tmp_path / "mnist"), "--mirror", "http://127.0.0.1:9/", "--mirror", url]) == 1
    assert capsys.readouterr().err == (
        f"error: --mirror {url}: expected an http:// or https:// URL, such as {download.MIRRORS[0]}\n"
    )
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://host:99999/", "Port out of range 0-65535"),
        ("http://host:abc/", "Port could not be cast to integer value as 'abc'"),
    ],
)
def test_a_mirror_that_is_no_url_is_named_with_the_reason(tmp_path, capsys, url, reason):
    assert command.main(["mnist", str(tmp_path / "mnist"), "--mirror", url]) == 1
    assert capsys.readouterr().err == f"error: --mirror {url}: not a valid URL ({reason})\n"
    assert not (tmp_path / "mnist").exists()


@contextlib.contextmanager
def answering(status: int, headers: dict[str, str], body: bytes = b"", pause: float = 0.0) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering every GET with ``status``, ``headers`` (where ``{path}`` stands for the
    path asked for) and ``body``, byte by byte ``pause`` seconds apart if ``pause``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value.format(path=self.path.lstrip("/")))
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # the client gave up
                for piece in [body[i : i + 1] for i in range(len(body))] if pause else [body]:
                    self.wfile.write(piece)
                    time.sleep(pause)

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP port on 127.0.0.1 that records every connection and closes it: a stand-in for an FTP server."""
    connections: list[str] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.01)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    connection, address = server.accept()
                    connections.append(str(address))
                    connection.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1], connections
        finally:
            stop.set()
            thread.join()


@pytest.mark.parametrize("scheme", ["ftp", "file"])
def test_a_redirect_is_followed_only_to_an_http_url(serve, tmp_path, capsys, scheme):
    with listener() as (port, connections):
        target = f"ftp://127.0.0.1:{port}/mnist.gz" if scheme == "ftp" else "file:///etc/passwd"
        with answering(302, {"Location": target, "Content-Length": "0"}) as url:
            assert command.main(["mnist", str(tmp_path), "--mirror", url, "--timeout", "2"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: cannot download train-images-idx3-ubyte.gz ({url}train-images-idx3-ubyte.gz: ")
    assert f"redirected to {target}; only http:// and https:// are followed" in error or (
        f"Redirection to url '{target}' is not allowed" in error  # urllib's own refusal of file://
    )
    assert connections == [] and list(tmp_path.iterdir()) == []


def test_a_redirect_to_another_http_mirror_is_followed(serve, tmp_path):
    mirror = serve(ARCHIVES)
    mirror.files = {f"moved/{name}": data for name, data in ARCHIVES.items()}
    with answering(301, {"Location": mirror.url + "moved/{path}", "Content-Length": "0"}) as url:
        assert command.main(["mnist", str(tmp_path), "--mirror", url]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(ARCHIVES)


def test_a_download_announcing_more_than_mnist_is_refused_before_reading(serve, tmp_path, capsys):
    with answering(200, {"Content-Length": str(download.MAX_BYTES + 1)}, b"tiny") as url:
        assert command.main(["mnist", str(tmp_path), "--mirror", url]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"{url}train-images-idx3-ubyte.gz: {download.MAX_BYTES + 1} bytes, too large for MNIST" in error
    assert list(tmp_path.iterdir()) == []


def test_a_mirror_that_trickles_is_given_up_as_too_slow_and_leaves_no_file(serve, tmp_path, capsys):
    # A byte every 50 ms for 3 s: each read gets something well within the timeout, so only a rate stops it.
    with answering(200, {"Content-Length": "9000000"}, b"x" * 60, pause=0.05) as url:
        assert command.main(["mnist", str(tmp_path), "--mirror", url, "--timeout", "0.5"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: cannot download train-images-idx3-ubyte.gz ({url}train-images-idx3-ubyte.gz: ")
    slow = r": too slow \((\d+) bytes in the last 0\.5 s, at least 65,536 needed; \1 of 9,000,000 received\)"
    assert re.search(slow, error), error
    assert error.endswith(f"into {tmp_path} by hand and run again")
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_short_is_named_as_such_not_as_a_checksum_mismatch(serve, tmp_path, capsys):
    with answering(200, {"Content-Length": "1000"}, b"0123456789") as url:
        assert command.main(["mnist", str(tmp_path), "--mirror", url]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"({url}train-images-idx3-ubyte.gz: the connection closed after 10 of 1,000 bytes); put" in error
    assert list(tmp_path.iterdir()) == []


def test_interrupting_a_download_leaves_no_file(tmp_path, monkeypatch, capsys):
    def interrupted(url, target, accepted, timeout):
        with replacing(target) as partial:
            partial.write(b"half a file")
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "_fetch", interrupted)
    assert command.main(["mnist", str(tmp_path), "--mirror", "http://127.0.0.1:9/"]) == 130
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.splitlines()[-1] == "error: interrupted (SIGINT); no partial files were left behind"


def test_an_unwritable_directory_is_one_line(serve, tmp_path, monkeypatch, capsys):
    blocked = tmp_path / ".train-images-idx3-ubyte.1234abcd.partial.gz"

    @contextlib.contextmanager
    def refuse(target):
        raise PermissionError(13, "Permission denied", str(blocked))
        yield

    monkeypatch.setattr(download, "replacing", refuse)
    assert command.main(["mnist", str(tmp_path), "--mirror", serve(ARCHIVES).url]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: cannot write {blocked}: Permission denied"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "the following arguments are required: DATASET"),
        (["cifar"], "invalid choice: 'cifar'"),
        (["mnist", "--timeout", "0"], "argument --timeout: must be > 0, got 0"),
        (["mnist", "--timeout", "soon"], "argument --timeout: expected a number of seconds, got 'soon'"),
        (["mnist", "--bogus"], "nnexp data: unrecognized arguments: --bogus (see nnexp data --help)"),
    ],
)
def test_usage_errors_exit_2(argv, complaint, capsys):
    assert command.main(argv) == 2
    error = capsys.readouterr().err
    [line] = error.splitlines()
    assert line.startswith("error: nnexp data") and line.endswith("--help)") and complaint in line, error


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NNEXP_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_mnist_dir() == tmp_path / "home" / ".cache" / "nnexp" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_mnist_dir() == tmp_path / "xdg" / "nnexp" / "mnist"
    monkeypatch.setenv("NNEXP_CACHE", str(tmp_path / "cache"))
    assert default_mnist_dir() == tmp_path / "cache" / "mnist"


def test_the_download_goes_to_the_default_directory(serve, monkeypatch, tmp_path):
    monkeypatch.setenv("NNEXP_CACHE", str(tmp_path))
    mirror = serve(ARCHIVES)
    assert command.main(["mnist", "--mirror", mirror.url]) == 0
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == sorted(ARCHIVES)


@pytest.mark.parametrize("name", download.FILES)
def test_the_embedded_checksums_accept_the_real_files(real_mnist, name):
    assert sha256_of(real_mnist / name) in download.CHECKSUMS[name]


def test_every_file_has_checksums_and_every_mirror_is_a_base_url():
    assert set(download.CHECKSUMS) == set(download.FILES)
    assert all(len(digest) == 64 for digests in download.CHECKSUMS.values() for digest in digests)
    assert all(mirror.endswith("/") for mirror in download.MIRRORS)


@pytest.mark.parametrize("fault", ["checksum", "404", "refused"])
def test_a_failed_download_removes_the_folders_it_created_and_left_empty(serve, tmp_path, fault):
    bad = {"checksum": {name: data[::-1] for name, data in ARCHIVES.items()}, "404": {}}
    url = closed_port_url() if fault == "refused" else serve(bad[fault]).url
    assert command.main(["mnist", str(tmp_path / "new" / "mnist"), "--mirror", url]) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_keeps_a_folder_that_was_there_or_holds_files(serve, tmp_path):
    (tmp_path / "existing").mkdir()
    partly = {"train-images-idx3-ubyte.gz": ARCHIVES["train-images-idx3-ubyte.gz"]}
    assert command.main(["mnist", str(tmp_path / "existing"), "--mirror", serve({}).url]) == 1
    assert command.main(["mnist", str(tmp_path / "new"), "--mirror", serve(partly).url]) == 1
    assert (tmp_path / "existing").is_dir() and list((tmp_path / "existing").iterdir()) == []
    assert [path.name for path in (tmp_path / "new").iterdir()] == ["train-images-idx3-ubyte.gz"]
