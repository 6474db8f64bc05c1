"""MNIST from public mirrors into a folder, and its CSV copies.

Every file is written atomically: to a temporary file in the same directory, checked, then renamed, so an
interrupted or failed download leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from nnexp.atomic import replacing
from nnexp.datasets.csv_format import write_csv
from nnexp.datasets.idx_format import locate_idx_files
from nnexp.datasets.mnist import CSV_FILES, read_idx_set
from nnexp.errors import ConfigError, DataError
from nnexp.schema import sha256_of

if TYPE_CHECKING:
    import http.client
    import urllib.request

#: Tried in order; a mirror that served one file is tried first for the rest.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
#: Accepted SHA-256 digests of each archive: first the one the public mirrors serve, then that of the project's
#: shared copy, which holds the same IDX bytes re-compressed (a gzip header without name or time).
CHECKSUMS: dict[str, tuple[str, ...]] = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    ),
}
DEFAULT_TIMEOUT = 10.0
#: What a mirror must send in each ``timeout`` seconds, or be given up as too slow: one that trickles a byte at a
#: time never lets a read time out. At this least rate (6.4 KB/s by default) the largest archive takes 26 minutes.
MIN_BYTES_PER_TIMEOUT = 2**16
#: The largest archive is 9.9 MB; a mirror sending far more is not sending MNIST.
MAX_BYTES = 32 * 2**20
CHUNK_BYTES = 2**16
#: The URL schemes a mirror, and any redirect a mirror answers with, may use.
URL_SCHEMES = ("http", "https")


class MirrorError(Exception):
    """One mirror failed to deliver one file; the next mirror is tried."""


class ChecksumMismatchError(MirrorError):
    """A mirror delivered a file whose SHA-256 is not an accepted one."""

    def __init__(self, url: str, actual: str) -> None:
        super().__init__(f"{url}: SHA-256 {actual} is not MNIST's")
        self.url, self.actual = url, actual


def download_mnist(directory: Path, mirrors: Sequence[str] = MIRRORS, timeout: float = DEFAULT_TIMEOUT) -> list[Path]:
    """Make sure ``directory`` holds the four archives with accepted checksums, downloading what is missing."""
    for mirror in mirrors:
        check_mirror(mirror)
    created = _make_directory(directory)
    order = list(mirrors)
    paths = []
    try:
        for name in FILES:
            target = directory / name
            paths.append(target)
            if target.is_file():
                present = sha256_of(target)
                if present in CHECKSUMS[name]:
                    progress_line(f"{name}: already present, checksum ok")
                    continue
                progress_line(f"{name}: present with SHA-256 {present}, not MNIST's; downloading it again")
            mirror = _fetch_from_any(name, target, order, timeout)
            order.remove(mirror)
            order.insert(0, mirror)
    except BaseException:
        _remove_empty(created)
        raise
    return paths


def check_mirror(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is an http:// or https:// URL with a host."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: a port that is not a number in 0..65535 raises
    except ValueError as exc:
        raise ConfigError(f"--mirror {url}: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in URL_SCHEMES or not parts.netloc:
        raise ConfigError(f"--mirror {url}: expected an http:// or https:// URL, such as {MIRRORS[0]}")


def _fetch_from_any(name: str, target: Path, mirrors: Sequence[str], timeout: float) -> str:
    """Download ``name`` from the first mirror that delivers it intact; return that mirror."""
    failures: list[MirrorError] = []
    for index, mirror in enumerate(mirrors):
        url = mirror.rstrip("/") + "/" + name
        try:
            size = _fetch(url, target, CHECKSUMS[name], timeout)
        except MirrorError as exc:
            failures.append(exc)
            if index + 1 < len(mirrors):
                progress_line(f"{name}: {exc}; trying the next mirror")
            continue
        progress_line(f"{name}: {size / 1e6:.1f} MB from {url}, checksum ok")
        return mirror
    mismatches = [failure for failure in failures if isinstance(failure, ChecksumMismatchError)]
    if mismatches:
        raise DataError(
            f"{name}: checksum mismatch: expected SHA-256 {' or '.join(CHECKSUMS[name])}, "
            f"got {mismatches[0].actual} from {mismatches[0].url}"
        )
    reasons = "; ".join(str(failure) for failure in failures)
    raise DataError(
        f"cannot download {name} ({reasons}); put the files {', '.join(FILES)} into {target.parent} "
        "by hand and run again"
    )


def _fetch(url: str, target: Path, accepted: Sequence[str], timeout: float) -> int:
    """Download ``url`` to ``target`` if its SHA-256 is in ``accepted``; return its size in bytes."""
    import http.client  # imported here: only downloads need the network stack, not every `nnexp` start
    import urllib.error
    import urllib.request

    digest = hashlib.sha256()
    with replacing(target) as partial:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "nnexp"})
            # A fresh opener reads the proxy settings of the environment now, not those of urllib's first call.
            with _opener().open(request, timeout=timeout) as response:
                size = _receive(response, url, timeout, digest, partial)
        except urllib.error.HTTPError as exc:
            raise MirrorError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise MirrorError(f"{url}: {_reason(exc.reason)}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException, ValueError) as exc:
            raise MirrorError(f"{url}: {_reason(exc)}") from None  # ValueError: not a URL urllib can open
        if digest.hexdigest() not in accepted:
            raise ChecksumMismatchError(url, digest.hexdigest())
    return size


def _receive(response: http.client.HTTPResponse, url: str, timeout: float, digest: Any, partial: IO[bytes]) -> int:
    """Copy the body of ``response`` into ``partial`` and ``digest``, giving up on one that is too large or too
    slow; return its size in bytes."""
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > MAX_BYTES:
        raise MirrorError(f"{url}: {announced} bytes, too large for MNIST")
    whole = f" of {int(announced):,}" if announced.isdigit() else " bytes"
    size = window_size = 0
    window_start = time.monotonic()
    # read1 returns what has arrived, whereas read waits for a whole chunk, however slowly it comes.
    while chunk := response.read1(CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_BYTES:
            raise MirrorError(f"{url}: more than {MAX_BYTES} bytes, too large for MNIST")
        digest.update(chunk)
        partial.write(chunk)
        window_size += len(chunk)
        if time.monotonic() - window_start >= timeout:
            if window_size < MIN_BYTES_PER_TIMEOUT:
                raise MirrorError(
                    f"{url}: too slow ({window_size:,} bytes in the last {timeout:g} s, at least "
                    f"{MIN_BYTES_PER_TIMEOUT:,} needed; {size:,}{whole} received)"
                )
            window_start, window_size = time.monotonic(), 0
    if announced.isdigit() and size < int(announced):  # read1 ends a body cut short as it ends a whole one
        raise MirrorError(f"{url}: the connection closed after {size:,}{whole} bytes")
    return size


def _opener() -> urllib.request.OpenerDirector:
    """urllib's opener, following a redirect only to an http:// or https:// URL (urllib's own follows ftp:// too)."""
    import urllib.request
    from urllib.parse import urlsplit

    class HttpRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: http.client.HTTPMessage,
            newurl: str,
        ) -> urllib.request.Request | None:
            if urlsplit(newurl).scheme.lower() not in URL_SCHEMES:
                fp.close()
                raise MirrorError(f"{req.full_url}: redirected to {newurl}; only http:// and https:// are followed")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HttpRedirects)


def _reason(error: object) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def convert_to_csv(idx_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``mnist_train.csv`` and ``mnist_test.csv`` (``label,p0,...,p783`` lines) from the IDX files."""
    raw = read_idx_set(locate_idx_files(idx_dir, f"download them with `nnexp data mnist {idx_dir}`"))
    _make_directory(out_dir)
    written = []
    for name, images, labels in zip(
        CSV_FILES, (raw.train_images, raw.test_images), (raw.train_labels, raw.test_labels), strict=True
    ):
        path = out_dir / name
        with replacing(path) as file:
            write_csv(file, images, labels)
        progress_line(f"{name}: {len(labels)} rows written to {path}")
        written.append(path)
    return written


def _make_directory(directory: Path) -> list[Path]:
    """Create ``directory`` and any missing parents; returns the folders created, deepest first."""
    missing = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise DataError(f"{directory}: cannot create the directory: {exc.strerror}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders``, deepest first, that a failed download created and left empty; stop at one that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (another process wrote there), or not ours to remove
            return


def progress_line(message: str) -> None:
    """One line of progress, on standard error."""
    print(message, file=sys.stderr, flush=True)
