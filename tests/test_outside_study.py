"""The "your own study" journey with a task, a generator and a reader defined outside wdb.

The plugins are the example files in ``tests/outside_study/`` (an MLP on sklearn digits, a
mean-of-two-parents generator, a reader for a home-made ``.npz`` format), copied to a temp dir
and used (1) by path, exactly as the README's "Your own study" section does, and (2) through the
entry points of a tiny distribution installed on ``sys.path`` for the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wdb import plugins
from wdb.cli.main import cli

HERE = Path(__file__).parent / "outside_study"
TRAIN = "zoo = 'digits' AND kind = 'training'"


def wdb(db: Path, *args: str, ok: bool = True) -> str:
    res = CliRunner().invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The journey by path: ingest (own reader), evaluate (own task), generate (own generator),
    noise baselines, outside samples with lineage, their own predictions, analyses."""
    root = tmp_path_factory.mktemp("own")
    for f in HERE.glob("*.py"):
        shutil.copy(f, root / f.name)
    task_cls = plugins.load_path("wdb.tasks", root / "my_task.py")
    task = task_cls()
    task.train_zoo(root / "zoo", runs=6)
    db = root / "db"
    reader, gen, task_file = (
        str(root / n) for n in ("my_reader.py", "my_generator.py", "my_task.py")
    )

    out = json.loads(
        wdb(db, "ingest", str(root / "zoo"), "--format", reader, "--zoo", "digits", "--json")
    )
    assert out[0]["checkpoints_added"] == 18 and out[0]["skipped"] == 0
    wdb(db, "evaluate", "--task", task_file)
    wdb(db, "generate", gen, "--train", TRAIN, "--n", "6")
    for sigma in ("0.01", "0.03"):
        wdb(
            db,
            "generate",
            "noise",
            "--train",
            TRAIN,
            "--set",
            "size=small",
            "--set",
            f"sigma={sigma}",
            "--set",
            "select=final",
        )
    wdb(db, "evaluate")  # the samples' task is found again from the path recorded at evaluation

    # an outside generator's samples, written by the researcher's own code, in their own format
    import wdb as W

    store = W.open(db)
    rows = store.weights([r["checkpoint_id"] for r in store.checkpoints(TRAIN + " AND step = 3")])
    rng = np.random.default_rng(5)
    samples = rows[rng.integers(0, len(rows), 5)] + 0.02 * rng.standard_normal((5, rows.shape[1]))
    layout = store.space(store.checkpoints(TRAIN)[0]["space_id"]).layout
    for i, row in enumerate(samples.astype(np.float32)):
        folder = root / "gen" / "runs" / f"outside-{i}"
        folder.mkdir(parents=True)
        np.savez(folder / "epoch_1.npz", **layout.unflatten(row))
    out = json.loads(
        wdb(
            db,
            "ingest",
            str(root / "gen"),
            "--format",
            reader,
            "--generator",
            "outside-mixup",
            "--trained-on",
            TRAIN,
            "--zoo",
            "digits-gen",
            "--json",
        )
    )
    assert out[0]["checkpoints_added"] == 5 and out[0]["generator_run"] is not None
    # ... and their evaluations, computed by the researcher's own code
    X, y = task.data("test")
    pred = task.predict(samples.astype(np.float32), X)
    np.savez(
        root / "preds.npz",
        run=np.array([f"outside-{i}" for i in range(5)]),
        step=np.ones(5, dtype=np.int64),
        errors=pred != y[None],
        accuracy=(pred == y[None]).mean(1),
    )
    wdb(db, "ingest-outputs", str(root / "preds.npz"), "--eval-set", "digits-mlp:test")
    wdb(
        db,
        "analyze",
        "memorization",
        "--method",
        "mixup",
        "--method",
        "outside-mixup",
        "--out",
        str(root / "report"),
    )
    return root, db, store, samples


def test_outside_generator_by_path_gets_every_classifier_figure(study):
    root, db, store, _ = study
    for method in ("mixup", "outside-mixup"):
        rec = json.loads((root / "report" / f"memorization_{method}.json").read_text())
        drawn = {f["name"] for f in rec["figures"]}
        assert {"heatmap", "min_l2_hist", "accuracy_novelty", "decision_boundaries"} <= drawn, (
            method,
            rec["skipped"],
        )
        assert rec["context"]["task"] == "digits-mlp"
        assert set(rec["context"]["baselines"]) == {"noise_1", "noise_2"}
    g = store.sql("SELECT * FROM generator_runs WHERE method = 'mixup'")[0]
    cfg = json.loads(g["config"])
    assert cfg["sigma"] == 0.01 and cfg["n_parents"] == 6  # typed config + returned record
    assert len(json.loads(g["train_ids"])) == 18


def test_outside_samples_have_lineage_and_their_own_error_sets(study):
    root, db, store, samples = study
    g = store.sql("SELECT * FROM generator_runs WHERE method = 'outside-mixup'")[0]
    assert g["status"] == "done" and g["train_selection"] == TRAIN
    assert sorted(json.loads(g["train_ids"])) == sorted(
        r["checkpoint_id"] for r in store.checkpoints(TRAIN)
    )
    runs = store.sql(
        "SELECT name FROM runs WHERE generator_run_id = :g ORDER BY name", {"g": g["id"]}
    )
    assert [r["name"] for r in runs] == [f"outside-{i}" for i in range(5)]
    ids = [store.checkpoint(f"outside-{i}")["checkpoint_id"] for i in range(5)]
    np.testing.assert_array_equal(store.weights(ids), samples.astype(np.float32))
    # IoU against training used the one shared eval set: a value, not a blank
    iou = store.sql("SELECT max_iou FROM novelty WHERE kind = 'generated' AND run LIKE 'outside-%'")
    assert len(iou) == 5 and all(r["max_iou"] is not None and 0 < r["max_iou"] <= 1 for r in iou)


def test_summary_evaluates_finding_3_for_the_outside_methods(study):
    root, *_ = study
    summary = (root / "report" / "summary.md").read_text()
    part = summary.split("## Finding 3")[1].split("## Finding 4")[0]
    assert "not evaluated" not in part.splitlines()[0]
    assert "Mixup (outside)" in part and "outside-mixup" in part


def test_readme_sql_returns_one_row_per_checkpoint(study):
    _, db, store, _ = study
    n = len(store.checkpoints())
    rows = store.sql("SELECT checkpoint_id FROM checkpoint_metrics")
    assert len(rows) == n == len({r["checkpoint_id"] for r in rows})
    nov = store.sql("SELECT checkpoint_id, metric FROM novelty")
    assert len(nov) == len({(r["checkpoint_id"], r["metric"]) for r in nov})
    nb = store.sql("SELECT checkpoint_id FROM latest_neighbors WHERE rank = 1 AND metric = 'l2'")
    assert len(nb) == len({r["checkpoint_id"] for r in nb}) > 0


def test_entry_points_of_an_installed_distribution(tmp_path, monkeypatch):
    """A tiny distribution (a .dist-info with entry_points.txt on sys.path) registers all three."""
    site = tmp_path / "site"
    site.mkdir()
    for src, mod in (
        ("my_task", "digits_task"),
        ("my_reader", "digits_reader"),
        ("my_generator", "digits_generator"),
    ):
        shutil.copy(HERE / f"{src}.py", site / f"{mod}.py")
    info = site / "outside_study-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-study\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[wdb.tasks]\ndigits-mlp = digits_task:DigitsMLP\n\n"
        "[wdb.readers]\nmine = digits_reader\n\n"
        "[wdb.generators]\nmixup = digits_generator\n"
    )
    monkeypatch.syspath_prepend(str(site))
    plugins.refresh()
    try:
        db = tmp_path / "db"
        listed = json.loads(wdb(db, "zoo", "list", "--json"))
        assert {"task": "digits-mlp", "distribution": "outside-study"}.items() <= next(
            r for r in listed if r["task"] == "digits-mlp"
        ).items()
        flat = {c: "".join(wdb(db, c, "--help").split()) for c in ("ingest", "generate")}
        assert "[mine|modelzoo|" in flat["ingest"] and "|mixup|" in flat["generate"]
        plugins.load("wdb.tasks", "digits-mlp")().train_zoo(tmp_path / "zoo", runs=2)
        out = json.loads(wdb(db, "ingest", str(tmp_path / "zoo"), "--zoo", "digits", "--json"))
        assert out[0]["format"] == "mine" and out[0]["checkpoints_added"] == 6  # detected
        res = json.loads(wdb(db, "evaluate", "--json"))  # the space maps back to the task
        assert sum(r["evaluated"] for r in res) == 6
        rep = json.loads(wdb(db, "generate", "mixup", "--train", TRAIN, "--n", "2", "--json"))
        assert rep["method"] == "mixup" and len(rep["runs"]) == 2
    finally:
        monkeypatch.undo()
        plugins.refresh()


def test_readme_sql_examples_run_and_give_one_row_per_checkpoint(study):
    _, _, store, _ = study
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b.split("```")[0] for b in readme.split("```sql\n")[1:]]
    statements = [s.strip() for b in blocks for s in b.split(";") if s.strip()]
    assert len(statements) >= 3
    for sql in statements:
        rows = store.sql(sql)
        assert rows, sql
        key = "checkpoint_id" if "checkpoint_id" in rows[0] else "name"
        assert len(rows) == len({r[key] for r in rows}), sql
