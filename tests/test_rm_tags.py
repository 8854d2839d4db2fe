"""``wdb rm`` (dry run, then --yes; rows and bytes go, everything else stays bit-exact),
``wdb tag`` / ``wdb note`` (run_tags, runs.note, shown by ``wdb ls runs``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from wdb.cli.main import cli
from wdb.errors import BadInput
from wdb.store.outputs import ensure_eval_set, write_outputs
from wdb.store.spaces import Layout

LAYOUT = Layout.from_arrays({"w": np.zeros((40, 30), np.float32), "b": np.zeros(40, np.float32)})


def run(db, *args):
    return CliRunner().invoke(cli, ["--db", str(db.path), *args])


@pytest.fixture
def filled(db):
    """Three training runs of 40 steps (rows 0..119), generated samples, metrics, predictions
    for every checkpoint, a saved novelty relation, tags."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((123, LAYOUT.n_params)).astype(np.float32)
    ids = {}
    for i, name in enumerate(("keep", "gone", "tail")):
        ids[name] = db.add_checkpoints(
            LAYOUT,
            rows[40 * i : 40 * (i + 1)],
            run=name,
            kind="training",
            zoo="z",
            metrics=[{"loss": float(s)} for s in range(40)],
        )
    ids["gen"] = db.add_checkpoints(LAYOUT, rows[120:] + 0.01, kind="generated")
    es = ensure_eval_set(db, "t", "t", "test", labels=np.arange(10) % 3)
    every = [i for v in ids.values() for i in v]
    write_outputs(db, es, "predictions", every, rng.integers(0, 3, (len(every), 10)))
    db.novelty("kind = 'generated'", k=2)
    db.tag("gone", reviewer="ana")
    ids["eval_set"] = es
    return db, rows, ids


def _count(db, sql: str) -> int:
    return db.sql(f"SELECT count(*) AS n FROM {sql}")[0]["n"]


def test_dry_run_lists_and_changes_nothing(filled):
    db, _, ids = filled
    before = {t: _count(db, t) for t in ("runs", "checkpoints", "metrics", "predictions")}
    nbytes = db.weights_store.array("spaces/1").nbytes_stored()
    report = db.rm("run = 'gone'")
    assert report.dry_run and [r["run"] for r in report.runs] == ["gone"]
    assert [c["checkpoint_id"] for c in report.checkpoints] == ids["gone"]
    assert report.rows["metrics"] == 40 and report.rows["predictions"] == 40
    assert report.rows["run_tags"] == 1
    assert {t: _count(db, t) for t in before} == before
    assert db.weights_store.array("spaces/1").nbytes_stored() == nbytes
    res = run(db, "rm", "--where", "run = 'gone'")
    assert res.exit_code == 0, res.output
    assert "would remove 1 runs, 40 checkpoints" in res.output and "add --yes" in res.output
    assert _count(db, "checkpoints") == before["checkpoints"]


def test_rm_runs_removes_every_row_and_reclaims_bytes(filled):
    db, rows, ids = filled
    arr = db.weights_store.array("spaces/1")
    bytes_before = arr.nbytes_stored()
    res = run(db, "rm", "--where", "run IN ('gone', 'tail')", "--yes")
    assert res.exit_code == 0, res.output
    assert "removed 2 runs, 80 checkpoints" in res.output and "reclaimed" in res.output
    gone = ids["gone"] + ids["tail"]
    assert not db.sql("SELECT * FROM run_info WHERE run IN ('gone', 'tail')")
    for table, col in (
        ("metrics", "checkpoint_id"),
        ("predictions", "checkpoint_id"),
        ("neighbors", "neighbor_id"),
        ("similarity", "nearest_id"),
    ):
        assert not db.sql(f"SELECT * FROM {table} WHERE {col} IN ({', '.join(map(str, gone))})")
    assert [r["run"] for r in db.runs("kind = 'training'")] == ["keep"]
    assert not db.sql("SELECT * FROM run_tags")
    # the relation still holds the generated samples' rows that point at 'keep'
    assert db.sql("SELECT count(*) AS n FROM relations")[0]["n"] == 1
    # bytes: 'tail' was the array's end (cut off), 'gone' the middle (zeroed); 'keep' and the
    # samples read back bit for bit and fsck finds nothing wrong
    new = db.weights_store.array("spaces/1")
    assert new.shape[0] == 123 and new.nbytes_stored() < 0.5 * bytes_before
    np.testing.assert_array_equal(db.weights(ids["keep"]), rows[:40])
    np.testing.assert_array_equal(db.weights(ids["gen"]), rows[120:] + 0.01)
    report = db.fsck()
    assert report.ok, report.problems
    # a later write appends after the last live row and reads back
    more = db.add_checkpoints(LAYOUT, rows[40:42], run="again", kind="training")
    np.testing.assert_array_equal(db.weights(more), rows[40:42])
    assert db.fsck().ok


def test_rm_tail_checkpoints_truncates_arrays(filled):
    db, rows, ids = filled
    report = db.rm("kind = 'generated'", what="checkpoints", yes=True)
    assert len(report.checkpoints) == 3 and len(report.runs) == 3  # each sample is its own run
    assert report.rows["relations"] == 1  # every row of the novelty relation was about them
    assert not db.sql("SELECT * FROM relations")
    assert db.weights_store.array("spaces/1").shape[0] == 120
    preds = f"predictions/{ids['eval_set']}"
    assert db.outputs_store.array(preds).shape[0] == 120
    entries = {a["array"]: a for a in report.reclaimed.arrays}
    assert entries["weights.zarr/spaces/1"]["truncated"] == 3
    assert entries[f"outputs.zarr/{preds}"]["truncated"] == 3
    np.testing.assert_array_equal(db.weights(ids["tail"]), rows[80:120])
    assert db.fsck().ok


def test_rm_some_checkpoints_keeps_the_run(filled):
    db, rows, ids = filled
    report = db.rm("run = 'keep' AND step < 20", what="checkpoints", yes=True)
    assert not report.runs and len(report.checkpoints) == 20
    assert [c["step"] for c in db.checkpoints("run = 'keep'")] == list(range(20, 40))
    np.testing.assert_array_equal(db.weights(ids["keep"][20:]), rows[20:40])
    assert db.fsck().ok


def test_rm_refuses_without_a_selection(filled):
    db = filled[0]
    with pytest.raises(BadInput, match="rm needs --where"):
        db.rm("")
    res = run(db, "rm", "--where", "run = 'x'; DROP TABLE runs", "--yes")
    assert res.exit_code != 0 and "--where" in res.output
    assert _count(db, "runs") == 6


def test_tags_and_notes_in_sql_and_ls(filled):
    db = filled[0]
    assert db.tag("keep", best="yes", seed=3) == {"best": "yes", "seed": "3"}
    assert db.tag("keep", best="no")["best"] == "no"  # a new value replaces the old one
    db.note("keep", "the reference run")
    res = run(db, "tag", "tail", "best=yes", "lr=0.1")
    assert res.exit_code == 0, res.output
    assert run(db, "note", "tail", "looks odd").exit_code == 0
    assert run(db, "note", "tail").output.strip() == "looks odd"
    out = json.loads(run(db, "ls", "runs", "--json").output)
    by = {r["run"]: r for r in out}
    assert by["keep"]["tags"] == "best=no, seed=3" and by["keep"]["note"] == "the reference run"
    assert by["tail"]["tags"] == "best=yes, lr=0.1"
    picked = json.loads(run(db, "ls", "runs", "--where", "tags LIKE '%best=yes%'", "--json").output)
    assert [r["run"] for r in picked] == ["tail"]
    rows = db.sql(
        "SELECT r.name FROM run_tags t JOIN runs r ON r.id = t.run_id "
        "WHERE t.key = 'best' AND t.value = 'yes'"
    )
    assert [r["name"] for r in rows] == ["tail"]
    shown = run(db, "show", "keep").output
    assert "tags: best=no, seed=3" in shown and "note: the reference run" in shown
    assert db.untag("keep", "seed") == {"best": "no"}
    assert run(db, "tag", "tail", "--remove", "lr").exit_code == 0
    assert db.tags("tail") == {"best": "yes"}
    db.note("keep", None)
    assert db.sql("SELECT note FROM run_info WHERE run = 'keep'")[0]["note"] is None
    bad = run(db, "tag", "tail", "novalue")
    assert bad.exit_code != 0 and "write key=value" in bad.output
    missing = run(db, "tag", "nope", "a=b")
    assert missing.exit_code != 0 and "run 'nope' not found" in missing.output
