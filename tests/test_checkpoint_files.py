"""Checkpoint manifests and their ``.npz`` are data: crafted or corrupt ones are one line naming the file and field,
before anything is used; interrupted writes leave nothing that lasts or is uploaded."""

from __future__ import annotations

import json
import math
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from nnexp import LOSSES, MODELS, OPTIMIZERS, Examples, Trainer
from nnexp.atomic import remove_partials
from nnexp.errors import DataError, NnexpError
from nnexp.job import checkpoint
from nnexp.job.resume import hydra_arguments
from nnexp.tracking import liveness

RUN_ID = "0123456789abcdef0123456789abcdef"
CONFIG = "trainer:\n  epochs: 3\n"
#: Nine nested YAML anchors (a "billion laughs") before a config: loading it took gigabytes and never ended.
LAUGHS = "zz_a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"zz_{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
PARTIALS = (".checkpoint-e000001-b00000000.1a2b3c4d.partial.npz", ".checkpoint.0f0f0f0f.partial.json")


ADAM = {"name": "adam", "learning_rate": 0.01}


def setup(hidden: int = 4, seed: int = 1, optimizer: dict = ADAM):
    rng = np.random.default_rng(seed)
    loss = LOSSES.build({"name": "cross_entropy"})
    network = MODELS.build({"name": "mlp", "hidden_sizes": [hidden]}).build(3, 2, loss, rng, np.float32)
    return network, loss, OPTIMIZERS.build(optimizer), rng, Trainer(3, 8, True)


def training_set() -> Examples:
    x = np.random.default_rng(5).standard_normal((40, 3)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    return Examples(x, LOSSES.build({"name": "cross_entropy"}).encode(labels, 2, np.float32), labels)


def saved(folder: Path, hidden: int = 4, seed: int = 1, optimizer: dict = ADAM, **identity) -> Path:
    """A checkpoint of one epoch of three, as a run writes it, in ``folder/checkpoints``; returns that folder."""
    network, loss, optimizer, rng, trainer = setup(hidden, seed, optimizer)
    trainer.epochs = 1
    trainer.fit(network, loss, optimizer, training_set(), rng)
    fields = {"run_id": RUN_ID, "config": CONFIG, "overrides": ["seed=3"], "output_dir": str(folder.resolve())}
    directory = folder / "checkpoints"
    checkpoint.save(
        directory,
        identity={**fields, **identity},
        network=network,
        optimizer=optimizer,
        rng=rng,
        state=trainer.state,
        callbacks={},
    )
    return directory


def edit(directory: Path, change) -> None:
    path = directory / checkpoint.MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def set_in(manifest: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return manifest


def error_of(directory: Path) -> str:
    with pytest.raises(NnexpError) as raised:
        checkpoint.load(directory)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("run_id", KeyError, "run_id is missing"),
        ("run_id", "../../etc", "run_id must be an MLflow run id (32 hex digits), found '../../etc'"),
        ("weights", "../../model.npz", "weights must be a file name checkpoint-eEPOCH-bBATCH.npz"),
        ("weights", "checkpoint-e000002-b00000000.npz", "weights must be the file of epoch 1, batch 0"),
        ("format", 3, "format must be 1 or 2, found 3"),
        ("format", True, "format must be 1 or 2, found True"),
        ("weights_sha256", KeyError, "weights_sha256 is missing"),
        ("weights_sha256", "abc", "weights_sha256 must be a SHA-256 (64 hex digits), found 'abc'"),
        ("progress.epoch", 10**12, "progress.epoch must be an integer 0..3, found 1000000000000"),
        ("progress.epoch", -1, "progress.epoch must be an integer 0..3, found -1"),
        ("progress.batch", "0", "progress.batch must be an integer >= 0, found '0'"),
        ("progress.loss_sum", float("nan"), "progress.loss_sum must be a finite number >= 0, found nan"),
        ("progress.seconds", -5, "progress.seconds must be a finite number >= 0 and <= 3.1536e+07, found -5"),
        ("progress.seconds", 1e308, "progress.seconds must be a finite number >= 0 and <= 3.1536e+07, found 1e+308"),
        ("history", [], "history must be metrics holding train_loss, found []"),
        ("history", ["train_loss", "evil"], "history must be metrics of train_loss, train_accuracy, epoch_seconds"),
        ("overrides", "seed=3", "overrides must be strings, found 'seed=3'"),
        ("output_dir", "relative/dir", "output_dir must be an absolute path, found 'relative/dir'"),
        ("config", "trainer: [", "config must be the run's config as YAML, found 'trainer: ['"),
        ("config", "seed: 1\n", "config's trainer must be an object, found None"),
        (
            "config",
            LAUGHS + CONFIG,
            "config, line 4: its YAML aliases (here *c) copy more than 10000 values, which no run's config does",
        ),
        ("config", "trainer:\n  epochs: true\n", "config's trainer.epochs must be an integer >= 1, found True"),
        ("rng_state", [1, 2], "rng_state must be an object, found [1, 2]"),
        ("rng_state.bit_generator", "MT19937", "rng_state.bit_generator must be 'PCG64', found 'MT19937'"),
        ("rng_state.state.state", 1.5, "rng_state.state.state must be an integer 0..3402823669209384634633746"),
        ("rng_state.state.state", -1, "rng_state.state.state must be an integer 0..3402823669209384634633746"),
        ("rng_state.state.inc", 2, "rng_state.state.inc must be odd, as every PCG64 increment is, found 2"),
        ("rng_state.has_uint32", KeyError, "rng_state.has_uint32 is missing"),
        ("rng_state.uinteger", 2**40, "rng_state.uinteger must be an integer 0..4294967295, found 1099511627776"),
        ("callbacks", [], "callbacks must be an object, found []"),
        ("callbacks.early_stopping", 3, "callbacks.early_stopping must be an object, found 3"),
        (
            "callbacks.early_stopping",
            {"best": 0.5, "best_epoch": -1, "wait": 0},
            "callbacks.early_stopping.best_epoch must be an integer 0..1, found -1",
        ),
        (
            "callbacks.early_stopping",
            {"best": 0.5, "best_epoch": 7, "wait": 0},
            "callbacks.early_stopping.best_epoch must be an integer 0..1, found 7",
        ),
        (
            "callbacks.early_stopping",
            {"best": 0.5, "best_epoch": 1, "wait": -3},
            "callbacks.early_stopping.wait must be an integer 0..1, found -3",
        ),
        (
            "callbacks.early_stopping",
            {"best": float("nan"), "best_epoch": 1, "wait": 0},
            "callbacks.early_stopping.best must be a finite number, found nan",
        ),
        (
            "callbacks.early_stopping",
            {"best": 0.5, "best_epoch": 0, "wait": 1},
            "callbacks.early_stopping.best must be infinity, as no epoch was best yet, found 0.5",
        ),
        ("callbacks.early_stopping", {"best": 0.5, "wait": 0}, "callbacks.early_stopping.best_epoch is missing"),
    ],
)
def test_a_crafted_manifest_field_is_named_in_one_line(tmp_path, field, value, expected):
    directory = saved(tmp_path)
    edit(directory, lambda manifest: set_in(manifest, field, value))
    message = error_of(directory)
    assert message.startswith(f"{directory / checkpoint.MANIFEST}: {expected}"), message


def rewritten(directory: Path, change) -> Path:
    """The checkpoint's .npz with ``change`` applied to its arrays, its digest recorded as a checkpoint would."""
    from nnexp.schema import sha256_of

    manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
    weights = directory / manifest["weights"]
    with np.load(weights) as data:
        arrays = change(dict(data))
    np.savez(weights, **arrays)
    (directory / checkpoint.MANIFEST).write_text(json.dumps({**manifest, "weights_sha256": sha256_of(weights)}))
    return weights


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda arrays: arrays | {"history/train_loss": np.array([0.5, 0.4])}, "history/train_loss must be 1 float64"),
        (lambda arrays: arrays | {"history/train_loss": np.array([1])}, "history/train_loss must be 1 float64"),
        (lambda arrays: {k: v for k, v in arrays.items() if k != "history/train_loss"}, "history arrays ["),
        (lambda arrays: arrays | {"history/evil": np.zeros(1)}, "history arrays ["),
    ],
)
def test_the_history_arrays_must_match_the_manifest_and_the_epochs(tmp_path, change, expected):
    directory = saved(tmp_path)
    weights = rewritten(directory, change)
    assert error_of(directory).startswith(f"{weights}: {expected}")


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("train_loss", np.nan, "history/train_loss[epoch 1] must be a finite number >= 0, found nan"),
        ("train_loss", np.inf, "history/train_loss[epoch 1] must be a finite number >= 0, found inf"),
        ("train_loss", -4.0, "history/train_loss[epoch 1] must be a finite number >= 0, found -4.0"),
        ("train_accuracy", 1.5, "history/train_accuracy[epoch 1] must be a finite number >= 0 and <= 1, found 1.5"),
        ("train_accuracy", -0.25, "history/train_accuracy[epoch 1] must be a finite number >= 0 and <= 1, found"),
        ("epoch_seconds", -3.0, "history/epoch_seconds[epoch 1] must be a finite number >= 0 and <= 3.1536e+07"),
        ("learning_rate", 0.0, "history/learning_rate[epoch 1] must be a rate > 0, found 0.0"),
        ("learning_rate", -np.inf, "history/learning_rate[epoch 1] must be a finite number >= 0, found -inf"),
    ],
)
def test_history_values_must_be_finite_and_within_their_metrics_range(tmp_path, metric, value, expected):
    """Resumed, they were logged to MLflow as the run's record and read by early stopping."""
    directory = saved(tmp_path)
    weights = rewritten(directory, lambda arrays: arrays | {f"history/{metric}": np.array([value])})
    assert error_of(directory).startswith(f"{weights}: {expected}")


def test_a_format_1_history_is_checked_the_same_way(tmp_path):
    directory = saved(tmp_path)
    history = checkpoint.load(directory).training_state().history
    rewritten(directory, lambda arrays: {k: v for k, v in arrays.items() if not k.startswith("history/")})
    history["train_loss"] = [float("inf")]
    edit(
        directory,
        lambda manifest: {**set_in(manifest, "weights_sha256", KeyError), "format": 1, "history": history},
    )
    assert error_of(directory) == (
        f"{directory / checkpoint.MANIFEST}: history.train_loss[epoch 1] must be a finite number >= 0, found inf"
    )


def test_the_history_is_kept_in_the_npz_and_read_back_as_floats(tmp_path):
    directory = saved(tmp_path)
    manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
    assert manifest["history"] == sorted(["train_loss", "train_accuracy", "epoch_seconds", "learning_rate"])
    history = checkpoint.load(directory).training_state().history
    assert set(history) == set(manifest["history"]) and all(type(v) is float for v in history["train_loss"])
    assert not any(key.startswith("history/") for key in checkpoint.load(directory).arrays)


def test_a_manifest_that_is_a_list_or_names_a_file_outside(tmp_path):
    directory = saved(tmp_path)
    manifest = directory / checkpoint.MANIFEST
    original = manifest.read_text()
    manifest.write_text("[1, 2]")
    assert error_of(directory) == f"{manifest}: the manifest must be an object, found [1, 2]"
    manifest.write_text(original)
    weights = directory / json.loads(original)["weights"]
    outside = tmp_path / "elsewhere.npz"
    weights.rename(outside)
    weights.symlink_to(outside)
    assert error_of(directory) == f"{manifest}: weights {weights.name!r} leads out of its folder"


def test_another_runs_npz_of_the_same_shapes_copied_over_the_checkpoint_is_refused(tmp_path):
    directory = saved(tmp_path / "own")
    foreign = next(saved(tmp_path / "other", seed=2).glob("checkpoint-*.npz"))
    weights = directory / foreign.name
    weights.write_bytes(foreign.read_bytes())
    assert error_of(directory) == (
        f"{weights}: was not written by run {RUN_ID}'s checkpoint (its SHA-256 differs from the one checkpoint.json "
        "records); another file was copied over it"
    )


def test_a_format_1_manifest_without_a_digest_is_still_read(tmp_path):
    """Format 1: no digest, and the history's values in the manifest."""
    directory = saved(tmp_path)
    history = checkpoint.load(directory).training_state().history
    rewritten(directory, lambda arrays: {k: v for k, v in arrays.items() if not k.startswith("history/")})
    edit(
        directory,
        lambda manifest: {**set_in(manifest, "weights_sha256", KeyError), "format": 1, "history": history},
    )
    loaded = checkpoint.load(directory)
    assert loaded.manifest["format"] == 1 and loaded.training_state().history == history
    edit(directory, lambda manifest: set_in(manifest, "history.train_loss", [0.5, 0.4]))
    assert error_of(directory).endswith("history.train_loss must be 1 numbers, one per epoch, found [0.5, 0.4]")


def test_a_truncated_or_flipped_npz_is_one_line(tmp_path):
    directory = saved(tmp_path, hidden=256)
    weights = next(directory.glob("checkpoint-*.npz"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert error_of(directory).startswith(f"{weights}: not a readable .npz file: File is not a zip file")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10  # inside the largest array's data: only the CRC can tell
    weights.write_bytes(bytes(flipped))
    assert "Bad CRC-32" in error_of(directory)


def test_an_npz_header_promising_more_than_the_file_holds_allocates_nothing(tmp_path):
    directory = saved(tmp_path)
    weights = next(directory.glob("checkpoint-*.npz"))
    with zipfile.ZipFile(weights, "w") as archive, archive.open("network/dense0.weight.npy", "w") as member:
        header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
        np.lib.format.write_array_header_1_0(member, header)
        member.write(b"\0" * 64)
    assert error_of(directory) == (
        f"{weights}: array network/dense0.weight declares (1000000000000,) float64 (8000000000000 bytes), "
        "but the file holds 64"
    )


def test_an_npz_of_pickled_objects_is_refused(tmp_path):
    directory = saved(tmp_path)
    weights = next(directory.glob("checkpoint-*.npz"))
    np.savez(weights, payload=np.array([{"a": 1}], dtype=object))
    assert error_of(directory) == f"{weights}: array payload holds Python objects; nnexp saves numbers only"


def test_restore_checks_the_batch_and_the_optimizer_against_the_run(tmp_path):
    directory = saved(tmp_path)
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(directory)
    loaded.manifest["progress"]["batch"] = 5  # 40 samples in batches of 8: an epoch has batches 0..4
    with pytest.raises(DataError, match=r"progress\.batch must be below 5, the batches of one epoch of this run"):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    loaded.manifest["progress"]["batch"] = 2
    with pytest.raises(DataError, match=r"progress/predicted must be 40 integer labels within an epoch, found none"):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    loaded.manifest["progress"]["batch"] = 0
    key = next(key for key in loaded.arrays if key.startswith("optimizer/m/"))
    loaded.arrays[key] = loaded.arrays[key][:-1]
    with pytest.raises(DataError, match=rf"{key} \(\(\d+,\) float32\) does not fit this run's optimizer$"):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)


#: Every built-in optimizer, with state to keep.
STATEFUL_OPTIMIZERS = [{"name": "sgd", "momentum": 0.9}, {"name": "rmsprop"}, ADAM]


@pytest.mark.parametrize("config", STATEFUL_OPTIMIZERS, ids=lambda config: config["name"])
def test_restore_refuses_a_checkpoint_missing_an_optimizer_state_array(tmp_path, config):
    """Resumed with zeros in its place: Adam's first steps after it were as large as at the start of training."""
    network, _, optimizer, rng, trainer = setup(optimizer=config)
    loaded = checkpoint.load(saved(tmp_path, optimizer=config))
    assert int(loaded.arrays["optimizer/iterations"]) > 0
    slot = optimizer.state_slots[-1]
    del loaded.arrays[f"optimizer/{slot}/bias"]
    with pytest.raises(DataError) as raised:
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert str(raised.value).startswith(f"{loaded.weights}: optimizer/{slot}/bias is missing; this run's ")


def test_restore_refuses_a_checkpoint_missing_the_step_count(tmp_path):
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    del loaded.arrays["optimizer/iterations"]
    with pytest.raises(DataError, match=r"optimizer/iterations is missing; this run's Adam optimizer keeps m/weight, "):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)


def test_a_checkpoint_before_the_first_step_needs_no_optimizer_state(tmp_path):
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    for key in [key for key in loaded.arrays if key.startswith("optimizer/")]:
        del loaded.arrays[key]
    loaded.arrays["optimizer/iterations"] = np.asarray(0)
    loaded.manifest["progress"]["epoch"] = 0
    loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert optimizer.iterations == 0


@pytest.mark.parametrize("batch", [0, 3])
@pytest.mark.parametrize("iterations", [0, 1, 4, 10**15, -5])
def test_restore_refuses_a_step_count_other_than_the_batches_trained(tmp_path, batch, iterations):
    """Obeyed before: Adam's bias correction and a schedule's steps then went on from the crafted count."""
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    loaded.manifest["progress"]["batch"] = batch
    loaded.arrays["progress/predicted"] = np.zeros(40, np.int64)
    loaded.arrays["optimizer/iterations"] = np.asarray(iterations)
    with pytest.raises(DataError) as raised:
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert str(raised.value) == (
        f"{loaded.weights}: optimizer/iterations must be {5 + batch} (1 x 5 batches for the epochs done"
        f"{' + 3 into epoch 2' if batch else ''}; one step a batch), found {iterations}"
    )
    loaded.arrays["optimizer/iterations"] = np.asarray(5 + batch)
    loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert optimizer.iterations == 5 + batch


@pytest.mark.parametrize(("config", "slot"), [({"name": "rmsprop"}, "mean_square"), (ADAM, "v")])
def test_restore_refuses_a_negative_average_of_squared_gradients(tmp_path, config, slot):
    """Accepted before: the next step took the square root of it, and the run went on with NaN weights."""
    network, _, optimizer, rng, trainer = setup(optimizer=config)
    assert optimizer.nonnegative_slots == (slot,)
    loaded = checkpoint.load(saved(tmp_path, optimizer=config))
    loaded.arrays[f"optimizer/{slot}/weight"] = -loaded.arrays[f"optimizer/{slot}/weight"] - 1
    with pytest.raises(DataError) as raised:
        loaded.restore(network, optimizer, rng, {}, trainer, 40)
    assert str(raised.value) == (
        f"{loaded.weights}: optimizer/{slot}/weight holds negative values, which a running average of squared "
        "gradients never does"
    )


@pytest.mark.parametrize("config", STATEFUL_OPTIMIZERS, ids=lambda config: config["name"])
def test_restore_refuses_optimizer_state_that_is_not_finite(tmp_path, config):
    network, _, optimizer, rng, trainer = setup(optimizer=config)
    loaded = checkpoint.load(saved(tmp_path, optimizer=config))
    key = f"optimizer/{optimizer.state_slots[0]}/weight"
    loaded.arrays[key] = loaded.arrays[key] * np.inf
    with pytest.raises(DataError, match=rf"{key} holds NaN or infinity, which no checkpoint of nnexp's does"):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)


def test_restore_refuses_weights_that_are_not_finite(tmp_path):
    """Resumed, they would end the run FAILED with "loss became NaN ...; try a smaller learning rate"."""
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    loaded.arrays["network/dense0.weight"] = loaded.arrays["network/dense0.weight"] * np.nan
    with pytest.raises(DataError, match=r"network/dense0\.weight holds NaN or infinity, which no checkpoint of"):
        loaded.restore(network, optimizer, rng, {}, trainer, 40)


@pytest.mark.parametrize(
    ("key", "dtype"),
    [
        ("network/dense0.weight", np.int64),
        ("network/dense1.bias", np.float16),
        ("network/dense0.weight", np.float64),
        ("optimizer/m/weight", np.float16),
        ("callback/early_stopping/best_weights.dense0.weight", np.int64),
    ],
)
def test_restore_refuses_arrays_of_another_dtype_than_the_runs(tmp_path, key, dtype):
    """Loading copied them into the float32 network silently: int64 weights truncated, float16 ones rounded."""
    from nnexp.core.training import EarlyStopping

    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    stopping = EarlyStopping(trainer, network, "train_loss")
    loaded.manifest["callbacks"] = {"early_stopping": {"best": 0.5, "best_epoch": 1, "wait": 0}}
    loaded.arrays["callback/early_stopping/best_weights.dense0.weight"] = loaded.arrays["network/dense0.weight"]
    if key.startswith("optimizer/"):
        key = next(name for name in loaded.arrays if name.startswith("optimizer/m/"))
    loaded.arrays[key] = loaded.arrays[key].astype(dtype)
    with pytest.raises(DataError) as raised:
        loaded.restore(network, optimizer, rng, {"early_stopping": stopping}, trainer, 40)
    assert str(raised.value) == (
        f"{loaded.weights}: {key} is {np.dtype(dtype)}, but this run's trainer.dtype is float32"
    )


def test_partial_files_are_removed_at_the_next_write_and_are_no_checkpoint_file(tmp_path):
    directory = saved(tmp_path)
    for name in PARTIALS:
        (directory / name).write_bytes(b"half")
    (directory / "notes.partial.txt").write_text("not ours")
    assert sorted(path.name for path in remove_partials(directory)) == sorted(PARTIALS)
    for name in PARTIALS:
        (directory / name).write_bytes(b"half")
    saved(tmp_path)
    assert sorted(path.name for path in directory.iterdir()) == [
        "checkpoint-e000001-b00000000.npz",
        "checkpoint.json",
        "notes.partial.txt",
    ]
    kept = [path.name for path in checkpoint.files(directory)]
    assert kept == ["checkpoint.json", "checkpoint-e000001-b00000000.npz"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+hydra.callbacks.x._target_=builtins.open", "an override of nnexp's own config"),
        ("hydra.run.dir=/tmp/elsewhere", "an override of nnexp's own config"),
        ("hydra/launcher=basic", "an override of nnexp's own config"),
        ("model@hydra=mlp", "an override of nnexp's own config"),
        ("resume=/tmp/other", "an override of nnexp's own config"),
        ("defaults=[]", "an override of nnexp's own config"),
        ("--experimental-rerun=/tmp/config.pickle", "an override of nnexp's config, not a command-line flag"),
        ("-m", "an override of nnexp's config, not a command-line flag"),
        ("seed=1,2,3", "one value, not a sweep"),
        ("seed=range(1000)", "one value, not a sweep"),
        ("tags.secret=${oc.env:HOME}", "a plain value, without an interpolation"),
        ("experiment=../../../tmp/evil", "a config group option by its name"),
        ("seed=[", "a Hydra override key=value"),
        ("~trainer", "an override that sets a value, not one that removes a part of every run's config"),
        ("model=nonexistent", "an option of model ("),
    ],
)
def test_resume_refuses_manifest_overrides_that_are_not_nnexps_config(tmp_path, override, expected):
    directory = saved(tmp_path, overrides=["seed=3", override])
    with pytest.raises(DataError) as raised:
        hydra_arguments([f"resume={directory}"], tmp_path)
    assert str(raised.value).startswith(f"{directory / checkpoint.MANIFEST}: overrides[1] must be {expected}")


def store_with_run(tmp_path: Path, output_dir: Path | None, host: str | None = None) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tags = {} if output_dir is None else {"output_dir": str(output_dir.resolve())}
    if host is not None:
        tags[liveness.HOST] = host
    run = client.create_run(client.create_experiment("nnexp"), tags=tags)
    client.set_terminated(run.info.run_id, "KILLED")
    return uri, run.info.run_id


def test_resume_takes_only_the_runs_own_folder_and_a_run_of_the_store(tmp_path):
    elsewhere = tmp_path / "another_run"
    elsewhere.mkdir()  # a run's folder that is gone was moved: see the test below
    uri, run_id = store_with_run(tmp_path, elsewhere)
    config = f"tracking:\n  uri: {uri}\n{CONFIG}"
    good = saved(tmp_path / "job", run_id=run_id, config=config, output_dir=str(elsewhere.resolve()))
    arguments = hydra_arguments([f"resume={good}"], tmp_path)
    assert arguments == ["seed=3", f"resume={good.resolve()}", f"hydra.run.dir='{elsewhere.resolve()}'"]

    own = saved(tmp_path / "job", run_id=run_id, config=config)
    with pytest.raises(DataError) as raised:
        hydra_arguments([f"resume={own}"], tmp_path)
    assert str(raised.value) == (
        f"{own / checkpoint.MANIFEST}: output_dir must be {elsewhere.resolve()}, the folder of run {run_id}, "
        f"found '{(tmp_path / 'job').resolve()}'"
    )
    unknown = saved(tmp_path / "job", config=config)
    with pytest.raises(NnexpError) as raised:
        hydra_arguments([f"resume={unknown}"], tmp_path)
    assert str(raised.value) == f"{unknown / checkpoint.MANIFEST}: run_id {RUN_ID} is no run in {uri}"


def test_without_a_recorded_folder_the_output_dir_is_the_one_holding_the_checkpoint(tmp_path):
    uri, run_id = store_with_run(tmp_path, None)
    config = f"tracking:\n  uri: {uri}\n{CONFIG}"
    directory = saved(tmp_path / "job", run_id=run_id, config=config, output_dir="/etc")
    with pytest.raises(DataError, match=r"output_dir must be .*/job, the folder holding the checkpoint, found '/etc'$"):
        hydra_arguments([f"resume={directory}"], tmp_path)
    directory = saved(tmp_path / "job", run_id=run_id, config=config)
    assert hydra_arguments([f"resume={directory}"], tmp_path)[-1] == f"hydra.run.dir='{(tmp_path / 'job').resolve()}'"


def test_a_run_whose_folder_is_gone_continues_in_the_folder_its_checkpoint_was_moved_to(tmp_path):
    uri, run_id = store_with_run(tmp_path, tmp_path / "outputs" / "old")
    config = f"tracking:\n  uri: {uri}\n{CONFIG}"
    old = str((tmp_path / "outputs" / "old").resolve())
    moved = saved(tmp_path / "outputs" / "moved", run_id=run_id, config=config, output_dir=old)
    arguments = hydra_arguments([f"resume={moved}"], tmp_path)
    assert arguments[-1] == f"hydra.run.dir='{moved.parent.resolve()}'"
    # MLflow's copy of a checkpoint (resume=<run id> downloads it) is no run folder: the run goes on in its own.
    copy = saved(tmp_path / "outputs" / "moved", run_id=run_id, config=config, output_dir=old).rename(
        tmp_path / "checkpoint"
    )
    assert hydra_arguments([f"resume={copy}"], tmp_path)[-1] == f"hydra.run.dir='{old}'"


def test_resume_by_run_id_finds_a_folder_moved_within_outputs_or_says_where_it_looked(tmp_path):
    """It resumed from MLflow's copy into a recreated old folder: the run split across two folders."""
    from nnexp.errors import ConfigError

    old = tmp_path / "outputs" / "old"
    uri, run_id = store_with_run(tmp_path, old, host=socket.gethostname())
    config = f"tracking:\n  uri: {uri}\n{CONFIG}"
    arguments = [f"resume={run_id}", f"tracking.uri={uri}"]
    with pytest.raises(ConfigError) as raised:
        hydra_arguments(arguments, tmp_path)
    assert str(raised.value) == (
        f"resume={run_id}: run {run_id}'s folder {old.resolve()} is gone, and no checkpoint of it is under "
        f"{(tmp_path / 'outputs').resolve()}; if you moved the folder, resume with resume=<its new path>/checkpoints"
    )
    saved(tmp_path / "outputs" / "other", config=config)  # another run's checkpoint is not taken for it
    moved = saved(tmp_path / "outputs" / "2026" / "moved", run_id=run_id, config=config, output_dir=str(old.resolve()))
    assert hydra_arguments(arguments, tmp_path)[-2:] == [
        f"resume={moved.resolve()}",
        f"hydra.run.dir='{moved.parent.resolve()}'",
    ]
    copied = saved(tmp_path / "outputs" / "copy", run_id=run_id, config=config, output_dir=str(old.resolve()))
    with pytest.raises(ConfigError) as raised:
        hydra_arguments(arguments, tmp_path)
    assert str(raised.value).endswith(
        f"is gone, and 2 folders hold its checkpoint ({moved.resolve()}, {copied.resolve()}); choose one with "
        "resume=<its checkpoints folder>"
    )


def finished_then_killed(project) -> tuple[MlflowClient, str, Path]:
    """A run that wrote its last checkpoint and was then marked KILLED, as a kill after that checkpoint leaves it."""
    result = project.run("trainer.epochs=2", "checkpoint.every=1")
    assert result.returncode == 0, result.stderr
    [run] = project.runs()
    client = MlflowClient(tracking_uri=project.store_uri)
    client.set_terminated(run.info.run_id, "KILLED")
    return client, run.info.run_id, Path(run.data.tags["output_dir"]) / "checkpoints"


def test_resume_by_run_id_of_a_moved_folder_continues_there_and_never_recreates_the_old_one(project, tmp_path):
    """Resumed from MLflow's copy into a recreated old folder before: one run's files in two folders."""
    client, run_id, directory = finished_then_killed(project)
    old = directory.parent
    elsewhere = old.rename(tmp_path / "elsewhere")
    refused = project.run(f"resume={run_id}")
    outputs = (project.root / "outputs").resolve()
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        f"error: resume={run_id}: run {run_id}'s folder {old} is gone, and no checkpoint of it is under {outputs}; "
        "if you moved the folder, resume with resume=<its new path>/checkpoints; if you removed it, resume from "
        f"MLflow's copy: mlflow artifacts download -r {run_id} -a checkpoint -d DIR, then resume=DIR/checkpoint",
    )
    assert not old.exists() and not (project.root / "outputs" / "resumed").exists()
    assert client.get_run(run_id).info.status == "KILLED"

    moved = elsewhere.rename(project.root / "outputs" / "moved")
    resumed = project.run(f"resume={run_id}")
    assert resumed.returncode == 0, resumed.stderr
    assert not old.exists(), "the run is not split across two folders"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["output_dir"] == str(moved.resolve())
    assert checkpoint.load(moved / "checkpoints").manifest["output_dir"] == str(moved.resolve())


def test_a_crafted_manifest_runs_nothing_writes_nothing_and_leaves_the_run_as_it_was(project, tmp_path):
    client, run_id, directory = finished_then_killed(project)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    original = (directory / checkpoint.MANIFEST).read_text()
    crafted = [
        "+hydra.callbacks.x._target_=builtins.open",
        f"+hydra.callbacks.x.file={victim}",
        "+hydra.callbacks.x.mode=w",
    ]
    edit(directory, lambda manifest: {**manifest, "overrides": manifest["overrides"] + crafted})
    result = project.run(f"resume={run_id}")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        f"error: {directory / checkpoint.MANIFEST}: overrides[2] must be an override of nnexp's own config ("
    )
    assert result.stderr.strip().endswith("found '+hydra.callbacks.x._target_=builtins.open'")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert victim.read_text() == "keep me"
    assert client.get_run(run_id).info.status == "KILLED"

    (directory / checkpoint.MANIFEST).write_text(original)
    edit(directory, lambda manifest: set_in(manifest, "progress.epoch", 10**12))
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {directory / checkpoint.MANIFEST}: progress.epoch must be an integer 0..2, found 1000000000000",
    )
    assert client.get_run(run_id).info.status == "KILLED"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_refused_resume_leaves_every_file_of_the_run_folder_as_it_was(project):
    """Hydra's copies of the config and the folder's lock were rewritten with the refused resume's, and a manifest's
    overrides that disagree with its own config were blamed on conf/ presets."""
    client, run_id, directory = finished_then_killed(project)
    folder = directory.parent
    edit(directory, lambda manifest: {**manifest, "overrides": [*manifest["overrides"], "tracking.experiment=else"]})
    before = folder_files(folder)
    result = project.run(f"resume={run_id}")
    assert folder_files(folder) == before
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {directory / checkpoint.MANIFEST}: overrides tracking.experiment=else do not compose to its config "
        "(tracking.experiment); a manifest's overrides and config are written together, so one of them was edited",
    )
    assert client.get_run(run_id).info.status == "KILLED"

    edit(directory, lambda manifest: {**manifest, "overrides": manifest["overrides"][:-1]})
    client.set_terminated(run_id, "FINISHED")
    before = folder_files(folder)
    result = project.run(f"resume={directory}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: run {run_id} is FINISHED; there is nothing to resume",
    )
    assert folder_files(folder) == before


def test_resume_refuses_another_runs_weights_copied_over_its_checkpoint(project):
    client, run_id, directory = finished_then_killed(project)
    result = project.run("trainer.epochs=2", "checkpoint.every=1", "seed=7")
    assert result.returncode == 0, result.stderr
    other = next(run for run in project.runs() if run.info.run_id != run_id)
    weights = next(directory.glob("checkpoint-*.npz"))
    weights.write_bytes((Path(other.data.tags["output_dir"]) / "checkpoints" / weights.name).read_bytes())
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: was not written by run {run_id}'s checkpoint (its SHA-256 differs from the one "
        "checkpoint.json records); another file was copied over it",
    )
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "train_loss")) == 2


def test_resume_refuses_weights_of_another_dtype_and_a_history_that_is_not_finite(project):
    """Both were resumed silently: int64 weights cast into the float32 network, an inf loss logged as the record."""
    client, run_id, directory = finished_then_killed(project)
    original = {path: path.read_bytes() for path in directory.iterdir()}
    key = "network/dense0.weight"
    weights = rewritten(directory, lambda arrays: arrays | {key: arrays[key].astype(np.int64)})
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: network/dense0.weight is int64, but this run's trainer.dtype is float32",
    )
    for path, data in original.items():
        path.write_bytes(data)
    rewritten(directory, lambda arrays: arrays | {"history/train_loss": np.array([0.7, np.inf])})
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: history/train_loss[epoch 2] must be a finite number >= 0, found inf",
    )
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "train_loss")) == 2


def test_resume_refuses_missing_or_negative_optimizer_state_and_leaves_the_run_as_it_was(project):
    """Both were resumed: zeros in place of the missing array, NaN weights from the negative one's square root."""
    client, run_id, directory = finished_then_killed(project)
    original = {path: path.read_bytes() for path in directory.iterdir()}
    weights = rewritten(directory, lambda arrays: {k: v for k, v in arrays.items() if k != "optimizer/v/bias"})
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: optimizer/v/bias is missing; this run's Adam optimizer keeps m/weight, m/bias, v/weight, "
        "v/bias after its first step",
    )
    for path, data in original.items():
        path.write_bytes(data)
    rewritten(directory, lambda arrays: arrays | {"optimizer/v/weight": -arrays["optimizer/v/weight"] - 1})
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: optimizer/v/weight holds negative values, which a running average of squared "
        "gradients never does",
    )
    for path, data in original.items():
        path.write_bytes(data)
    rewritten(directory, lambda arrays: arrays | {"optimizer/iterations": np.asarray(10**15)})
    result = project.run(f"resume={run_id}")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"error: {weights}: optimizer/iterations must be 88 (2 x 44 batches for the epochs done; one step a batch), "
        "found 1000000000000000",
    )
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.get_metric_history(run_id, "train_loss")) == 2


def test_partial_files_are_removed_at_resume_and_never_uploaded(project):
    client, run_id, directory = finished_then_killed(project)
    for name in PARTIALS:
        (directory / name).write_bytes(b"half")
    result = project.run(f"resume={run_id}")
    assert result.returncode == 0, result.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted(path.name for path in directory.iterdir()) == ["checkpoint-e000002-b00000000.npz", "checkpoint.json"]
    uploaded = {Path(entry.path).name for entry in client.list_artifacts(run_id, "checkpoint")}
    assert uploaded == {"checkpoint-e000002-b00000000.npz", "checkpoint.json"}


def test_restore_checks_early_stoppings_state_before_training_uses_it(tmp_path):
    from nnexp.core.training import EarlyStopping

    directory = saved(tmp_path)
    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(directory)
    stopping = EarlyStopping(trainer, network, "train_loss")
    loaded.manifest["callbacks"] = {"early_stopping": {"best": None, "best_epoch": 1, "wait": 0}}
    with pytest.raises(DataError, match=r"does not fit this run's network or optimizer: float\(\) argument"):
        loaded.restore(network, optimizer, rng, {"early_stopping": stopping}, trainer, 40)
    loaded.manifest["callbacks"]["early_stopping"]["best"] = 0.5
    loaded.arrays["callback/early_stopping/best_weights.dense0.weight"] = np.zeros((3, 5), np.float32)
    with pytest.raises(DataError, match=r"early stopping's best_weights\.dense0\.weight \(3, 5\) does not fit"):
        loaded.restore(network, optimizer, rng, {"early_stopping": stopping}, trainer, 40)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def checkpointed_epochs(monkeypatch, epochs: int, trained: int, seconds_each: float, **options) -> list[int]:
    from nnexp.job import checkpoint

    clock = Clock()
    monkeypatch.setattr(checkpoint.time, "monotonic", clock)
    saved: list[int] = []
    epoch = 0
    checkpointer = checkpoint.Checkpointer(lambda: saved.append(epoch), **options)
    checkpointer.on_train_begin(epochs, 10)
    for epoch in range(1, trained + 1):
        clock.now += seconds_each
        checkpointer.on_epoch_end(epoch, {})
    checkpointer.on_train_end({"train_loss": [0.0] * trained})
    return saved


def test_by_default_a_checkpoint_comes_every_thirty_seconds_and_after_the_last_epoch(monkeypatch):
    # 10,000 epochs of 4 ms: one checkpoint every 7,500 epochs, not one per epoch.
    assert checkpointed_epochs(monkeypatch, 10_000, 10_000, 0.004) == [7500, 10_000]
    assert checkpointed_epochs(monkeypatch, 5, 5, 40.0) == [1, 2, 3, 4, 5]  # slow epochs: each one


def test_checkpoint_every_n_epochs_and_after_the_last(monkeypatch):
    assert checkpointed_epochs(monkeypatch, 7, 7, 100.0, every=3) == [3, 6, 7]


def test_a_run_ended_by_early_stopping_checkpoints_its_last_epoch(monkeypatch):
    assert checkpointed_epochs(monkeypatch, 500, 39, 0.01) == [39]
    assert checkpointed_epochs(monkeypatch, 500, 9, 0.01, every=3) == [3, 6, 9]  # already written: not twice


@pytest.mark.parametrize(
    ("monitor", "maximize", "state", "expected"),
    [
        ("train_loss", False, {"best": -5.0, "best_epoch": 1, "wait": 0}, "{value!r}, history train_loss[epoch 1]"),
        ("val_loss", False, {"best": 0.5, "best_epoch": 1, "wait": 0}, "val_loss's value at best_epoch 1, but the"),
        ("train_accuracy", True, {"best": math.inf, "best_epoch": 0, "wait": 1}, "-inf, as no epoch was best yet"),
    ],
    ids=["not-the-best-epochs", "monitor-not-in-history", "other-direction"],
)
def test_early_stoppings_best_must_be_its_best_epochs_value(tmp_path, monitor, maximize, state, expected):
    """A manifest's best=-5.0 was believed: the resumed run finished with best_train_loss=-5.0, no epoch's value."""
    from nnexp.core.training import EarlyStopping

    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    loaded.manifest["callbacks"] = {"early_stopping": state}
    stopping = EarlyStopping(trainer, network, monitor, maximize)
    with pytest.raises(DataError) as raised:
        loaded.restore(network, optimizer, rng, {"early_stopping": stopping}, trainer, 40)
    value = loaded.manifest["history"]["train_loss"][0]
    found = state["best"]
    assert str(raised.value).startswith(
        f"{loaded.path}: callbacks.early_stopping.best must be {expected.format(value=value)}"
    ), str(raised.value)
    assert str(raised.value).endswith(f", found {found!r}")


def test_early_stoppings_best_at_its_best_epoch_is_restored(tmp_path):
    from nnexp.core.training import EarlyStopping

    network, _, optimizer, rng, trainer = setup()
    loaded = checkpoint.load(saved(tmp_path))
    value = loaded.manifest["history"]["train_loss"][0]
    loaded.manifest["callbacks"] = {"early_stopping": {"best": value, "best_epoch": 1, "wait": 0}}
    stopping = EarlyStopping(trainer, network, "train_loss")
    loaded.restore(network, optimizer, rng, {"early_stopping": stopping}, trainer, 40)
    assert (stopping.best, stopping.best_epoch) == (value, 1)
