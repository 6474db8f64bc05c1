"""The files a user asks predictions for, read into the rows a model takes: CSV rows of features, IDX image sets,
and pictures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnexp.datasets.csv_header import is_header
from nnexp.datasets.csv_lines import read_lines
from nnexp.errors import DataError, abbreviated, format_bytes

if TYPE_CHECKING:
    from PIL.Image import Image

    from nnexp.network_files import NetworkSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")
#: Bytes one input row costs while it is classified, per feature or class: float64 copies of the row (the input,
#: its float cast, the network's layers in the worst case) and the table of probabilities and its lines.
BYTES_PER_VALUE = 8 * 4
#: A CSV cell's bytes at most, generously: a float64 written in full, ``-1.2345678901234567e-308``, is 24.
MAX_CELL_BYTES = 64
#: Room for a line's end and for a header's column names.
LINE_SLACK_BYTES = 1024


def check_fits(path: Path, x: np.ndarray, n_classes: int) -> None:
    """Refuse, in one line, an input whose rows cannot all be classified at once in the memory available."""
    from nnexp.job.memory import available_bytes

    available = available_bytes()
    needed = len(x) * (x.shape[1] + n_classes) * BYTES_PER_VALUE
    if available is not None and needed > available:
        raise DataError(
            f"{path}: {len(x)} rows need about {format_bytes(needed)} to classify at once and "
            f"{format_bytes(available)} is available; split the file"
        )


def read_input(path: Path, spec: NetworkSpec, scale: bool) -> np.ndarray:
    """The rows to classify, ``(n, n_features)`` float64, from a CSV, image or IDX file."""
    with open(path, "rb") as file:
        head = file.read(8)
    if path.suffix.lower() in IMAGE_SUFFIXES or head.startswith(IMAGE_SIGNATURES):
        return scale_pixels(read_image(path, image_shape(path, spec, "an image")), spec)
    if _is_idx(path, head):
        return scale_pixels(read_idx(path, image_shape(path, spec, "an IDX image file")), spec)
    rows = read_csv(path, np.dtype(spec.dtype), spec.n_features)
    if rows.shape[1] != spec.n_features:
        hint = ""
        if spec.image_shape and rows.shape[1] == spec.n_features + 1:
            hint = "; a label column first, as in MNIST's CSV files? drop it"
        raise DataError(
            f"{path}: rows of {rows.shape[1]} values, but the model takes {spec.n_features} features per row{hint}"
        )
    if scale:
        image_shape(path, spec, "scale=true", "and scales nothing")
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise DataError(f"{path}: scale=true expects raw pixel values 0..255, found {rows.min():g}..{rows.max():g}")
        return scale_pixels(rows, spec)
    return rows


def image_shape(
    path: Path, spec: NetworkSpec, what: str, hint: str = "so give a CSV file of feature rows"
) -> tuple[int, int]:
    """The model's image shape; raises if the model was not trained on images."""
    if not spec.image_shape:
        raise DataError(
            f"{path}: {what} needs a model trained on images such as MNIST; "
            f"this one takes {spec.n_features} features, {hint}"
        )
    rows, columns = spec.image_shape
    return rows, columns


def scale_pixels(pixels: np.ndarray, spec: NetworkSpec) -> np.ndarray:
    """Raw pixel rows 0..255 scaled as the model's training data was (``dataset.scaling``)."""
    from nnexp.datasets.mnist import Scaling

    return Scaling(spec.pixel_scaling).apply(pixels).astype(np.float64)


def _is_idx(path: Path, head: bytes) -> bool:
    from nnexp.datasets.idx_format import GZIP_MAGIC, IMAGE_MAGIC, LABEL_MAGIC

    return head.startswith(GZIP_MAGIC) or int.from_bytes(head[:4], "big") in (IMAGE_MAGIC, LABEL_MAGIC)


def read_idx(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The images of an IDX3 file as ``(n, rows * columns)`` raw pixels, checked against the model's shape."""
    from nnexp.datasets.idx_format import read_idx_images

    images = read_idx_images(path)
    if images.shape[1:] != shape:
        raise DataError(
            f"{path}: images of {images.shape[1]}x{images.shape[2]} pixels, but the model takes {shape[0]}x{shape[1]}"
        )
    if not len(images):
        raise DataError(f"{path}: holds no images")
    return images.reshape(len(images), -1)


def read_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One image as a ``(1, rows * columns)`` row of raw pixels, white digit on black as in MNIST.

    Grayscale; an image with transparency takes its opacity as the ink. If the pixels along the border are
    lighter than mid-grey on average (mean > 127), the image is a dark digit on a light background and is
    inverted. It is then padded with black to a square and resized to ``shape`` (area averaging when shrinking).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image that Pillow can read") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard against a small file of billions of pixels
        raise DataError(f"{path}: too large for an image of one digit: {str(exc).split(',')[0]}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as an image: {exc}") from None
    pixels = _ink(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    height, width = pixels.shape
    side = max(height, width)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = pixels
    rows, columns = shape
    resized = Image.fromarray(square)
    if (side, side) != (rows, columns):
        method = Image.Resampling.BOX if side > max(rows, columns) else Image.Resampling.BILINEAR
        resized = resized.resize((columns, rows), method)
    return np.asarray(resized, dtype=np.uint8).reshape(1, rows * columns)


def _ink(image: Image) -> np.ndarray:
    """Grayscale pixels ``(height, width)`` ``uint8``; the alpha channel instead, when some pixel is transparent."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., 3]
        if alpha.min() < 255:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_csv(path: Path, dtype: np.dtype, columns: int) -> np.ndarray:
    """Rows of comma-separated numbers as ``(n, columns)`` float64, below a header row of column names if any; each a
    finite number in ``dtype``, the model's. A line far longer than a row of ``columns`` numbers is refused before
    the file is parsed, which would take several times its size in memory."""
    limit = columns * MAX_CELL_BYTES + LINE_SLACK_BYTES

    def too_long(line: int) -> DataError:
        return DataError(
            f"{path}: line {line} is longer than {limit:,} bytes, more than a row of the model's {columns} features "
            "takes; expected rows of comma-separated numbers"
        )

    try:
        text = read_lines(path, limit, too_long).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file, an image or an IDX file") from None
    lines = text.splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: empty file, expected rows of comma-separated numbers")
    if is_header(path, numbered[0][0], numbered[0][1].split(",")):
        numbered = numbered[1:]
        if not numbered:
            raise DataError(f"{path}: a header row and no data rows")
    body = "\n".join(line for _, line in numbered)
    try:
        rows = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64, comments=None)
    except ValueError:
        raise DataError(f"{path}: {_first_bad_row(numbered)}") from None
    with np.errstate(over="ignore"):
        held = rows.astype(dtype, copy=False)
    bad = np.argwhere(~np.isfinite(held))
    if len(bad):  # nan, inf, a number too large for a float such as 1e400, or for the model's dtype such as 1e39
        row, column = bad[0]
        number, line = numbered[row]
        cell = line.split(",")[column].strip()
        if np.isfinite(rows[row, column]):
            expected = f"too large for the model's {held.dtype} (at most ±{np.finfo(held.dtype).max:.4g})"
        else:
            expected = "not a finite number"
        raise DataError(f"{path}: line {number}: column {column + 1} is {abbreviated(cell)}, {expected}")
    return rows


def _first_bad_row(numbered: list[tuple[int, str]]) -> str:
    """What is wrong with the first row that is not like the first data row, in words."""
    width = len(numbered[0][1].split(","))
    for number, line in numbered:
        cells = line.split(",")
        for column, cell in enumerate(cells, 1):
            try:
                float(cell)
            except ValueError:
                return f"line {number}, column {column}: {abbreviated(cell.strip())!r} is not a number"
        if len(cells) != width:
            return f"line {number}: {len(cells)} values, but line {numbered[0][0]} has {width}"
    return "not a CSV file of numbers"
