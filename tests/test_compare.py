"""The run tables shared by the sweep summary and ``nnexp compare``, on stand-in runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nnexp.commands import compare
from nnexp.commands.arguments import ArgumentParser, add_limit, limit
from nnexp.tracking import tables
from nnexp.tracking.tables import Ranking, Table, configurations, configurations_table, runs_table, varying_params


def fake_run(name, status="FINISHED", params=None, metrics=None, tags=None):
    info = SimpleNamespace(run_name=name, run_id=f"id-{name}", status=status, start_time=1000, end_time=3500)
    data = SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {})
    return SimpleNamespace(info=info, data=data)


def test_table_renders_markdown_csv_and_aligned_text():
    table = Table(["run", "value"], [["a|b", "1"], ["long name", "22"]])
    assert table.markdown().splitlines() == ["| run | value |", "|---|---|", "| a\\|b | 1 |", "| long name | 22 |"]
    assert table.csv() == "run,value\na|b,1\nlong name,22\n"
    assert table.text().splitlines() == ["run        value", "---------  -----", "a|b        1", "long name  22"]


def test_control_characters_from_the_store_are_shown_escaped_in_every_table_form():
    """A run named with an escape sequence recoloured the terminal in nnexp runs, compare and the sweep summary."""
    from nnexp.tracking.liveness import describe

    runs = [fake_run("a\x1b[31mred", params={"note": "x\ry"}), fake_run("b", params={"note": "z"})]
    table = runs_table(runs, ["note"], [], None)
    for form in ("text", "markdown", "csv"):
        shown = table.render(form)
        assert "\x1b" not in shown and "\r" not in shown
        assert "a\\x1b[31mred" in shown and "x\\ry" in shown
    assert describe(runs[0]).startswith("run a\\x1b[31mred (")


def test_varying_params_prefer_a_group_choice_to_its_fields_and_skip_parents():
    runs = [
        fake_run("a", params={"seed": "1", "model.activation": "relu", "trainer.epochs": "5"}, tags={"model": "mlp"}),
        fake_run("b", params={"seed": "2", "model.activation": "tanh", "trainer.epochs": "5"}, tags={"model": "two"}),
        fake_run("sweep", params={"best.seed": "1"}, tags={"nnexp_command": "sweep"}),
    ]
    assert varying_params(runs) == ["model", "seed"]


def test_ranking_follows_the_objective_tag_and_its_direction():
    runs = [
        fake_run("a", metrics={"val_loss": 0.5}, tags={"objective": "val_loss", "objective_direction": "minimize"}),
        fake_run("b", metrics={"val_loss": 0.2}, tags={"objective": "val_loss", "objective_direction": "minimize"}),
        fake_run("c", status="FAILED", tags={"objective": "val_loss", "failure_reason": "loss became nan"}),
    ]
    ranking = Ranking.of(runs)
    assert (ranking.metric, ranking.maximize, ranking.worst()) == ("val_loss", False, float("inf"))
    table = runs_table(runs, [], ["val_loss"], ranking)
    assert [row[0] for row in table.rows] == ["b", "a", "c"]  # best first, the run without the metric last
    assert table.columns[-1] == "failure_reason" and table.rows[-1][-1] == "loss became nan"
    assert table.rows[0][table.columns.index("seconds")] == "2.5"
    assert Ranking.of(runs, "test_accuracy").maximize


def test_configurations_average_over_seeds_and_ignore_failed_runs():
    runs = [
        fake_run("a1", params={"seed": "1"}, metrics={"test_accuracy": 0.9}, tags={"model": "a"}),
        fake_run("a2", params={"seed": "2"}, metrics={"test_accuracy": 0.8}, tags={"model": "a"}),
        fake_run("b1", params={"seed": "1"}, metrics={"test_accuracy": 0.95}, tags={"model": "b"}),
        fake_run("b2", status="FAILED", params={"seed": "2"}, tags={"model": "b"}),
    ]
    ranking = Ranking("test_accuracy", maximize=True)
    groups = configurations(runs, ["model", "seed"], ranking)
    assert [(group.params, group.values) for group in groups] == [
        ({"model": "b"}, [0.95]),
        ({"model": "a"}, [0.9, 0.8]),
    ]
    assert groups[1].mean == pytest.approx(0.85) and groups[1].std == pytest.approx(0.0707107)
    assert configurations_table(groups, ["model", "seed"], ranking).rows[1] == ["a", "0.8500 ± 0.0707", "2"]
    assert configurations(runs, ["model"], ranking) == []  # no seeds swept: nothing to average


@pytest.mark.parametrize("value", ["-1", "0"])
def test_compare_refuses_a_limit_below_one_as_runs_does(tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    assert compare.main(["--limit", value]) == 1
    assert capsys.readouterr().err == f"error: --limit must be >= 1, got {value}\n"
    assert list(tmp_path.iterdir()) == []


def test_compare_all_lists_every_run_and_excludes_limit(capsys):
    parser = ArgumentParser(prog="nnexp compare")
    add_limit(parser, "runs")
    assert limit(parser.parse_args(["--all"])) == 0
    assert limit(parser.parse_args(["--limit", "3"])) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--all", "--limit", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_table_too_wide_for_the_terminal_cuts_its_widest_cells_but_not_run_ids():
    from nnexp.tracking.tables import Table

    run_id = "a" * 32
    table = Table(["run", "overrides", "run_id"], [["moons " * 10, "x=" + "1" * 80, run_id], ["b", "y=2", "c" * 32]])
    fitted = table.text(width=70)
    assert max(len(line) for line in fitted.splitlines()) <= 70
    assert run_id in fitted and "c" * 32 in fitted
    assert "…" in fitted.splitlines()[2]
    assert table.text() == table.text(width=1000)  # a wide terminal, or --wide: as it was
    assert len(table.text().splitlines()[2]) > 150


def test_a_job_that_failed_before_its_config_was_composed_shows_its_overrides():
    composed = fake_run("a", params={"optimizer.learning_rate": "0.1", "seed": "1"}, tags={"model": "two_layer"})
    failed = fake_run("b", "FAILED", tags={"overrides": "model=nonexistent +tags.note=x optimizer.learning_rate=0.2"})
    assert tables.settings(failed) == {"model": "nonexistent", "optimizer.learning_rate": "0.2"}  # not a tag
    assert tables.settings(composed) == {"optimizer.learning_rate": "0.1", "seed": "1", "model": "two_layer"}
    assert varying_params([composed, failed]) == ["model", "optimizer.learning_rate", "seed"]


def test_a_sweeps_view_shows_its_children_with_the_swept_settings_and_metrics_best_first():
    """MLflow's run list shows no params or metrics by default; the view a sweep's address names selects them."""
    import json

    view = json.loads(
        tables.sweep_view(
            "ab12",
            ["model", "optimizer.learning_rate"],
            ["test_loss", "test_accuracy"],
            Ranking("test_loss", maximize=False),
        )
    )
    assert view == {
        "searchFilter": "tags.mlflow.parentRunId = 'ab12'",
        "orderByKey": "metrics.`test_loss`",
        "orderByAsc": True,
        # A group's choice is recorded as a tag, its fields as params.
        "selectedColumns": [
            "tags.`model`",
            "params.`optimizer.learning_rate`",
            "metrics.`test_loss`",
            "metrics.`test_accuracy`",
        ],
    }
    assert (
        json.loads(tables.sweep_view("ab12", [], ["val_accuracy"], Ranking("val_accuracy", True)))["orderByAsc"]
        is False
    )


def test_nnexp_runs_and_compare_show_a_stored_escape_sequence_escaped(project):
    """Another tool (or an older nnexp) may have stored any name: the terminal gets it escaped, never raw."""
    from mlflow import MlflowClient

    from nnexp.tracking.tracked_run import Tracker

    tracker = Tracker(project.store_uri, "nnexp")
    client = MlflowClient(project.store_uri)
    parent = client.create_run(tracker.experiment_id, run_name="sweep\x1b[2J")
    tags = {"mlflow.parentRunId": parent.info.run_id}
    child = client.create_run(tracker.experiment_id, run_name="job\rforged", tags=tags)
    client.log_metric(child.info.run_id, "test_accuracy", 0.5)
    for run in (child, parent):
        client.set_terminated(run.info.run_id)
    listed = project.run("runs")
    compared = project.run("compare", "--sweep", parent.info.run_id)
    for result in (listed, compared):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "sweep\\x1b[2J" in listed.stdout and "job\\rforged" in listed.stdout
    assert compared.stdout.startswith(f"sweep\\x1b[2J ({parent.info.run_id}): 1 runs")
    assert "job\\rforged" in compared.stdout
