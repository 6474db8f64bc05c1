"""The mnist_csv plugin: the tutorial's format, headers, line endings, and every bad row named by file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from nnexp.config import schema_for
from nnexp.datasets import csv_format
from nnexp.datasets.base import DATASETS
from nnexp.datasets.csv_format import read_csv
from nnexp.datasets.mnist import Scaling, Validation
from nnexp.datasets.mnist_csv import MnistCsv
from nnexp.errors import DataError, ParameterError

HEADER = ",".join(["label", *(f"{row}x{col}" for row in range(1, 29) for col in range(1, 29))]) + "\n"


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def load(train: Path, test: Path, **options):
    return MnistCsv(str(train), str(test), **options).load(np.random.default_rng(0))


@pytest.fixture(params=["one block", "small blocks"])
def block_bytes(request, monkeypatch) -> None:
    """Parse in the default block size, and in blocks of about two lines to test the seams between blocks."""
    if request.param == "small blocks":
        monkeypatch.setattr(csv_format, "BLOCK_BYTES", 4096)


def csv_error(path: Path) -> str:
    with pytest.raises(DataError) as caught:
        read_csv(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_files_round_trip(csv_pair, tiny, block_bytes):
    splits = load(*csv_pair, scaling=Scaling.none, val_size=0)
    np.testing.assert_array_equal(splits.x_train, flat(tiny.train_images))
    np.testing.assert_array_equal(splits.y_train, tiny.train_labels)
    np.testing.assert_array_equal(splits.x_test, flat(tiny.test_images))
    np.testing.assert_array_equal(splits.y_test, tiny.test_labels)
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    assert (splits.n_classes, splits.n_features) == (10, 784)


@pytest.mark.parametrize(
    "variant", ["header", "crlf", "no final newline", "blank lines at the end", "byte order mark", "leading zeros"]
)
def test_accepted_variations_of_the_format(mnist_files, tiny, variant):
    text = mnist_files.csv_text(tiny.train_images, tiny.train_labels, "\r\n" if variant == "crlf" else "\n")
    text = {
        "header": HEADER + text,
        "no final newline": text.rstrip("\n"),
        "blank lines at the end": text + "\n\n",
        "byte order mark": "\ufeff" + text,
        "leading zeros": text.replace(",0,", ",000,").replace(",5,", ",05,"),
    }.get(variant, text)
    images, labels = read_csv(mnist_files.write_csv("train.csv", text))
    np.testing.assert_array_equal(images, flat(tiny.train_images))
    np.testing.assert_array_equal(labels, tiny.train_labels)


def test_options_are_shared_with_mnist_idx(csv_pair, tiny):
    splits = load(*csv_pair, scaling=Scaling.offset, validation=Validation.stratified, val_size=20, max_test=4)
    assert np.bincount(splits.y_val, minlength=10).tolist() == [4, 3, 3, 2, 2, 2, 1, 1, 1, 1]
    np.testing.assert_allclose(splits.x_test, flat(tiny.test_images[:4]) / 255 * 0.99 + 0.01, rtol=1e-6)
    assert splits.x_val.dtype == np.float32


def test_paths_default_to_the_files_the_data_command_writes(tmp_path, monkeypatch, tiny):
    cfg = OmegaConf.structured(schema_for(MnistCsv, "mnist_csv"))
    assert cfg.train_path is None and cfg.test_path is None
    assert cfg.val_size == 10000 and cfg.scaling == Scaling.unit and cfg.validation == Validation.last
    monkeypatch.setenv("NNEXP_CACHE", str(tmp_path))
    with pytest.raises(DataError, match=rf"^{tmp_path}/mnist/mnist_train\.csv: no such file; write it with `nnexp.*"
                       r"or give your files with dataset.train_path=\.\.\. dataset.test_path=\.\.\."):
        MnistCsv().read()


def test_out_of_range_options_are_rejected_when_built():
    with pytest.raises(ParameterError) as caught:
        DATASETS.build({"name": "mnist_csv", "train_path": "a.csv", "test_path": "b.csv", "max_train": 0})
    assert str(caught.value) == "dataset.max_train must be >= 1 or null, got 0"


def rows(tiny, count: int = 12) -> list[list[str]]:
    """Cells of the first ``count`` training rows, for a test to spoil one."""
    return [
        [str(int(label)), *map(str, image.ravel().tolist())]
        for image, label in zip(tiny.train_images[:count], tiny.train_labels[:count], strict=True)
    ]


def text_of(cells: list[list[str]], header: bool = False) -> str:
    return (HEADER if header else "") + "".join(",".join(row) + "\n" for row in cells)


def spoil(tiny, line: int, change) -> str:
    """The CSV text with ``change`` applied to the cells of data line ``line`` (1-based)."""
    cells = rows(tiny)
    change(cells[line - 1])
    return text_of(cells)


def set_cell(column: int, value: str):
    def change(row: list[str]) -> None:
        row[column - 1] = value

    return change


@pytest.mark.parametrize(
    ("line", "change", "problem"),
    [
        (3, lambda row: row.pop(), "784 columns, expected 785 (a label and 784 pixels)"),
        (3, lambda row: row.append("0"), "786 columns, expected 785 (a label and 784 pixels)"),
        (2, set_cell(10, "300"), "pixel 300 in column 10 is outside 0..255"),
        (12, set_cell(785, "256"), "pixel 256 in column 785 is outside 0..255"),
        (4, set_cell(1, "11"), "label 11 is outside 0..9"),
        (5, set_cell(7, "abc"), "column 7 is 'abc', not a whole number"),
        (5, set_cell(7, "1.5"), "column 7 is '1.5', not a whole number"),
        (5, set_cell(7, "-1"), "column 7 is '-1', not a whole number"),
        (6, set_cell(7, " 3"), "column 7 is ' 3', not a whole number"),
        (7, set_cell(20, ""), "column 20 is empty"),
        (7, set_cell(785, ""), "column 785 is empty"),
        (8, set_cell(30, "1000"), "pixel 1000 in column 30 is outside 0..255"),
        (8, set_cell(30, "0012"), "pixel '0012' in column 30 has more than three digits"),
        (9, set_cell(1, "07"), "label '07' has leading zeros"),
        (10, lambda row: row.clear(), "empty line"),
    ],
)
def test_a_bad_row_is_named_by_file_line_and_problem(mnist_files, tiny, block_bytes, line, change, problem):
    path = mnist_files.write_csv("train.csv", spoil(tiny, line, change))
    assert csv_error(path) == f"{path}: line {line}: {problem}"


def test_line_numbers_count_the_header(mnist_files, tiny):
    cells = rows(tiny)
    cells[2][5] = "x"
    path = mnist_files.write_csv("train.csv", text_of(cells, header=True))
    assert csv_error(path) == f"{path}: line 4: column 6 is 'x', not a whole number"


def test_the_first_bad_row_is_reported_whatever_is_wrong_below_it(mnist_files, tiny, block_bytes):
    cells = rows(tiny)
    cells[1][10] = "300"  # line 2: a value error ...
    cells[3].pop()  # ... above a row with a column missing, which misaligns everything below it
    cells[5][3] = "?"
    path = mnist_files.write_csv("train.csv", text_of(cells))
    assert csv_error(path) == f"{path}: line 2: pixel 300 in column 11 is outside 0..255"
    cells[1][10] = "3"
    path.write_text(text_of(cells))
    assert csv_error(path) == f"{path}: line 4: 784 columns, expected 785 (a label and 784 pixels)"


def test_a_lone_carriage_return_is_not_a_line_ending(mnist_files, tiny):
    text = text_of(rows(tiny)).replace("\n", "\r", 1)
    path = mnist_files.write_csv("train.csv", text)
    assert csv_error(path).startswith(f"{path}: line 1: column 785 is ")


@pytest.mark.parametrize("text", ["", "\n", "\r\n\r\n"])
def test_an_empty_file_is_named(mnist_files, text):
    path = mnist_files.write_csv("train.csv", text)
    assert csv_error(path) == f"{path}: empty file, expected lines of label,pixel_1,...,pixel_784"


def test_a_header_without_rows_is_named(mnist_files):
    path = mnist_files.write_csv("train.csv", HEADER)
    assert csv_error(path) == f"{path}: a header line and no data rows"


def test_a_missing_file_is_named(csv_pair, tmp_path):
    missing = tmp_path / "missing_test.csv"
    with pytest.raises(DataError) as caught:
        load(csv_pair[0], missing, val_size=0)
    assert str(caught.value) == f"{missing}: no such file"


def test_errors_in_the_test_file_name_it(csv_pair, tiny):
    train, test = csv_pair
    test.write_text(test.read_text().replace("\n", ",7\n", 1))
    with pytest.raises(DataError) as caught:
        load(train, test, val_size=0)
    assert str(caught.value) == f"{test}: line 1: 786 columns, expected 785 (a label and 784 pixels)"


def test_mnist_csv_is_registered():
    assert DATASETS.get("mnist_csv") is MnistCsv


@pytest.mark.parametrize("line", ["0", "5,1,2", ","])
def test_a_file_of_short_lines_reserves_no_table_for_them(tmp_path, line):
    import tracemalloc

    path = tmp_path / "short.csv"
    path.write_text(f"{line}\n" * 400_000)  # a 785-byte row reserved per line would be 314 MB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"short.csv: line 1: "):
            read_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20


@pytest.mark.parametrize("header", [False, True])
def test_a_line_longer_than_any_row_is_refused_unparsed(tmp_path, header):
    """A first line of 120 million cells was split whole (7.1 GB) before its columns were counted."""
    path = tmp_path / "long.csv"
    path.write_text((HEADER if header else "") + "1," * 400_000 + "1\n")
    assert_refused_as_too_long(path, 2 if header else 1, 8 * 2**20)


@pytest.mark.parametrize("first", ["", "5" + ",0" * 784 + "\n"], ids=["first line", "second line"])
def test_an_endless_line_is_refused_after_reading_a_block_of_it_not_the_whole_file(tmp_path, first):
    """The first line of a 1 GB sparse file took 6 s and 1.4 GB to refuse: the file was read whole first."""
    path = tmp_path / "sparse.csv"
    with path.open("wb") as file:
        file.write(first.encode())
        file.truncate(64 * 2**20)  # 64 MiB of NUL bytes without a newline, taking no room on disk
    assert_refused_as_too_long(path, 2 if first else 1, 4 * 2**20)


def assert_refused_as_too_long(path, line: int, most_bytes: int) -> None:
    """Reading ``path`` is refused for its ``line``'s length, having held less than ``most_bytes`` meanwhile."""
    import tracemalloc

    tracemalloc.start()
    try:
        message = csv_error(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (
        f"{path}: line {line}: longer than 262,144 bytes, where a row of a label and 784 pixels takes at most 3,139"
    )
    assert peak < most_bytes


@pytest.mark.parametrize("header", ["h" * 3_000_000, ",".join(f"pixel{column}" for column in range(40_000))])
def test_a_header_longer_than_a_row_may_be_is_refused_not_skipped(mnist_files, tiny, header):
    """A header of one 3 MB cell was judged on its first 262,144 bytes, taken for column names and skipped."""
    path = mnist_files.write_csv("train.csv", header + "\n" + text_of(rows(tiny)))
    assert csv_error(path) == (
        f"{path}: line 1: longer than 262,144 bytes, where a row of a label and 784 pixels takes at most 3,139"
    )


def test_a_header_as_long_as_a_row_may_be_is_read(mnist_files, tiny):
    header = ",".join(["label", *(f"pixel_{index}".ljust(300, "_") for index in range(784))])
    assert len(header) < 262_144
    path = mnist_files.write_csv("train.csv", header + "\n" + text_of(rows(tiny)))
    images, labels = read_csv(path)
    assert images.shape == (12, 784) and labels.tolist() == tiny.train_labels[:12].tolist()


def cut(text: str) -> str:
    """``text``'s first 40 characters and an ellipsis, as a message shows a long cell."""
    return text[:40] + "…"


@pytest.mark.parametrize(
    ("cells", "problem"),
    [  # a file with tabs for commas: a row of 3,600 characters was quoted whole in a one-line message
        (["\t".join(["0", *["197"] * 784])], f"line 1, column 1: {cut(chr(9).join(['0', *['197'] * 20]))!r} is"),
        (["1", "x" * 5000, *["0"] * 783], f"line 1: column 2 is {cut('x' * 41)!r}, not a whole number"),
        (["0" * 300 + "1", *["0"] * 784], f"line 1: label {cut('0' * 41)!r} has leading zeros"),
        # Python refuses to convert more than 4,300 digits: these were a ValueError traceback
        (["1", "9" * 5000, *["0"] * 783], f"line 1: pixel {cut('9' * 41)} in column 2 is outside 0..255"),
        (["1" + "0" * 5000, *["0"] * 784], f"line 1: label {cut('1' + '0' * 40)} is outside 0..9"),
        (["1", "0" * 5000 + "7", *["0"] * 783], f"line 1: pixel {cut('0' * 41)!r} in column 2 has more than three"),
    ],
    ids=["tabs", "long-cell", "long-label", "huge-pixel", "huge-label", "zero-padded-pixel"],
)
def test_a_long_cell_is_quoted_cut_short(mnist_files, tiny, cells, problem):
    path = mnist_files.write_csv("train.csv", ",".join(cells) + "\n" + text_of(rows(tiny)))
    message = csv_error(path)
    assert message.startswith(f"{path}: {problem}"), message
    assert len(message) < len(str(path)) + 140


@pytest.mark.parametrize(
    ("first", "problem"),
    [  # each row was taken for a header before, and the file read without it
        ("-1", "line 1: column 1 is '-1', not a whole number"),
        ("5.0", "line 1: column 1 is '5.0', not a whole number"),
        (" 5", "line 1: column 1 is ' 5', not a whole number"),
    ],
)
def test_a_first_row_holding_a_number_is_data_not_a_header(mnist_files, tiny, first, problem):
    cells = rows(tiny)
    cells[0][0] = first
    path = mnist_files.write_csv("train.csv", text_of(cells))
    assert csv_error(path) == f"{path}: {problem}"


def test_a_first_row_with_a_hex_pixel_is_data_not_a_header(mnist_files, tiny):
    cells = rows(tiny)
    cells[0][1] = "0x10"
    path = mnist_files.write_csv("train.csv", text_of(cells))
    assert csv_error(path) == f"{path}: line 1: column 2 is '0x10', not a whole number"


def test_a_first_row_of_neither_numbers_nor_column_names_is_named(mnist_files, tiny):
    path = mnist_files.write_csv("train.csv", HEADER.replace("label,", "label,#,", 1) + text_of(rows(tiny)))
    assert csv_error(path) == f"{path}: line 1, column 2: '#' is neither a number nor a column name"


def test_a_device_or_pipe_is_refused_before_it_is_read(tmp_path):
    """/dev/zero has no end: read whole, it filled the memory until the kernel killed the run (exit 137)."""
    import os

    with pytest.raises(DataError, match=r"^/dev/zero: is not a regular file; give a file of comma-separated rows$"):
        read_csv(Path("/dev/zero"))
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(DataError, match=r"pipe\.csv: is not a regular file"):
        read_csv(tmp_path / "pipe.csv")


@pytest.mark.parametrize("spelling", ["same path", "another spelling", "a link"])
def test_the_training_file_as_test_file_is_refused(mnist_files, spelling):
    train, _ = mnist_files.write_csv_pair()
    test = {"same path": train, "another spelling": train.parent / "." / train.name}.get(spelling)
    if test is None:
        test = train.parent / "link.csv"
        test.symlink_to(train)
    with pytest.raises(DataError) as caught:
        load(train, test, val_size=10)
    assert str(caught.value) == (
        f"dataset.train_path and dataset.test_path are the same file ({train.resolve()}); "
        "test on data the network is not trained on"
    )
