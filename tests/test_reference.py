"""A generator run knows its reference set (revision 0009): it is recorded with the samples,
``novelty`` uses it by default (``--reference`` still wins), and ``own_lineage`` flags a sample
whose nearest reference is its own prompt."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.toyzoo import write_toy_mlp_zoo
from wdb import plugin as P
from wdb import plugins
from wdb.cli.main import cli
from wdb.query.nearest import novelty
from wdb.query.reference import selection
from wdb.store.spaces import Layout

TRAIN = "zoo = 'toy' AND kind = 'training'"
RUNS, STEPS = 4, 3


def add_zoo(db) -> dict[tuple[int, int], int]:
    """(run, step) → checkpoint id: runs far apart, steps of one run 1 apart."""
    rng = np.random.default_rng(0)
    layout = Layout.from_arrays({"w": np.zeros((4, 5), np.float32), "b": np.zeros(4, np.float32)})
    out = {}
    for r in range(RUNS):
        base = rng.normal(0, 10.0, layout.n_params)
        rows = np.stack([base + s * rng.normal(size=base.shape) for s in range(STEPS)])
        ids = db.add_checkpoints(
            layout, rows.astype(np.float32), run=f"train_{r}", kind="training", zoo="toy"
        )
        out.update({(r, s): int(i) for s, i in enumerate(ids)})
    return out


def prompted(info: P.MethodInfo, reconstruct: bool = False) -> types.SimpleNamespace:
    """A G.pt-like method: sample 0 is a copy of its prompt (step 0 of run 0), sample 1 is
    prompted by the same checkpoint but lands next to run 1's step 1."""

    def sample(model, train, n, config, seed, load):
        pos = {(r["run"], int(r["step"])): p for p, r in enumerate(train.info)}
        prompt = pos[("train_0", 0)]
        other = pos[("train_1", 1)]
        rows = train.weights[[prompt, other]] + 1e-3
        info = [{"prompt_checkpoint": int(train.ids[prompt])}] * 2
        out = [P.Samples(rows, info=info)]
        if reconstruct:
            rec = train.weights + 1e-4
            src = [{"source_checkpoint": int(i)} for i in train.ids]
            out.append(P.Samples(rec, kind="reconstructed", info=src))
        return out

    return types.SimpleNamespace(
        NAME="prompted",
        KIND="generated",
        INFO=info,
        default_config=lambda size: {"size": size, "n": 2},
        fit=P.no_fit,
        sample=sample,
    )


@pytest.fixture
def method():
    made = []

    def register(info: P.MethodInfo, **kw):
        m = prompted(info, **kw)
        plugins.register("wdb.generators", "prompted", m)
        made.append(m)
        return m

    yield register
    if made:
        plugins.unregister("wdb.generators", "prompted")


def _reference(db, gid: int) -> set[int]:
    rows = db.sql(
        "SELECT checkpoint_id FROM reference_sets WHERE generator_run_id = :g", {"g": gid}
    )
    return {int(r["checkpoint_id"]) for r in rows}


def test_run_records_final_checkpoints_and_novelty_defaults_to_them(db, method, capsys):
    ids = add_zoo(db)
    method(P.MethodInfo(reference_steps="final"))
    rep = db.generate("prompted", train=TRAIN)
    gid = rep.generator_run_id
    finals = {ids[(r, STEPS - 1)] for r in range(RUNS)}
    assert _reference(db, gid) == finals
    assert rep.config["reference"] == f"the final checkpoint of each training run ({RUNS} of 12)"
    # the reference_info view names them
    view = db.sql(f"SELECT method, step, kind FROM reference_info WHERE generator_run_id = {gid}")
    assert {(r["method"], r["step"], r["kind"]) for r in view} == {
        ("prompted", STEPS - 1, "training")
    }

    gen = f"generator_run_id = {gid}"
    rows = novelty(db, gen)
    assert "recorded reference set" in capsys.readouterr().err
    assert {r["nearest_id"] for r in rows} <= finals
    assert [r["own_lineage"] for r in rows] == [False, False]  # prompts are not final steps
    rel = db.sql("SELECT reference_selection FROM relations ORDER BY id DESC LIMIT 1")[0]
    assert rel["reference_selection"] == selection(gid)

    # an explicit reference wins; the nearest is then the prompt exactly for sample 0
    rows = novelty(db, gen, reference="kind = 'training'")
    by_nearest = {r["nearest_id"]: r["own_lineage"] for r in rows}
    assert by_nearest == {ids[(0, 0)]: True, ids[(1, 1)]: False}
    stored = db.sql(
        "SELECT nearest_id, own_lineage FROM novelty WHERE checkpoint_id IN "
        f"(SELECT checkpoint_id FROM checkpoint_info WHERE {gen})"
    )
    assert {r["nearest_id"]: r["own_lineage"] for r in stored} == by_nearest


def test_reconstructions_of_final_steps_and_derived_lineage(db, method):
    ids = add_zoo(db)
    method(P.MethodInfo(reference="reconstructed", reference_steps="final"), reconstruct=True)
    gid = db.generate("prompted", train=TRAIN).generator_run_id
    ref = db.sql(f"SELECT run, kind FROM reference_info WHERE generator_run_id = {gid}")
    assert len(ref) == RUNS and {r["kind"] for r in ref} == {"reconstructed"}
    srcs = {
        json.loads(r["config"])["source_checkpoint"]
        for r in db.sql(
            "SELECT r.config FROM runs r JOIN checkpoint_info c ON c.run_id = r.id "
            f"WHERE c.{selection(gid)}"
        )
    }
    assert srcs == {ids[(r, STEPS - 1)] for r in range(RUNS)}
    # against every reconstruction, sample 0's nearest is the reconstruction of its prompt:
    # derived from its own prompt, so in its lineage
    rows = novelty(
        db,
        f"generator_run_id = {gid} AND kind = 'generated'",
        reference=f"generator_run_id = {gid} AND kind = 'reconstructed'",
    )
    assert sorted(r["own_lineage"] for r in rows) == [False, True]


def test_method_hook_and_old_runs_fall_back_with_a_note(db, method, capsys):
    ids = add_zoo(db)
    m = method(P.MethodInfo())
    m.reference_set = lambda train, samples: [ids[(2, 0)], ids[(3, 0)]]
    gid = db.generate("prompted", train=TRAIN).generator_run_id
    assert _reference(db, gid) == {ids[(2, 0)], ids[(3, 0)]}
    # a run from before revision 0009 has no recorded set: kind = 'training', and a note
    db.sql(f"DELETE FROM reference_sets WHERE generator_run_id = {gid}", write=True)
    capsys.readouterr()
    rows = novelty(db, f"generator_run_id = {gid}")
    err = capsys.readouterr().err
    assert f"reference: kind = 'training' (generator run {gid} recorded no reference set" in err
    assert [r["own_lineage"] for r in rows] == [True, False]


def test_bad_hook_fails_the_run_and_leaves_nothing(db, method):
    add_zoo(db)
    m = method(P.MethodInfo())
    m.reference_set = lambda train, samples: [10**9]
    with pytest.raises(P.WdbError, match="reference_set"):
        db.generate("prompted", train=TRAIN)
    assert not db.sql("SELECT * FROM reference_sets")
    assert db.sql("SELECT status FROM generator_runs")[0]["status"] == "failed"


def test_cli_novelty_shows_own_lineage_and_rm_forgets_reference_rows(db, method):
    ids = add_zoo(db)
    method(P.MethodInfo())
    gid = db.generate("prompted", train=TRAIN).generator_run_id
    assert _reference(db, gid) == set(ids.values())  # default: every training checkpoint
    res = CliRunner().invoke(
        cli,
        ["--db", str(db.path), "query", "novelty", "--targets", f"generator_run_id = {gid}"]
        + ["--json"],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert sorted(r["own_lineage"] for r in rows) == [False, True]
    table = CliRunner().invoke(
        cli, ["--db", str(db.path), "query", "novelty", "--targets", f"generator_run_id = {gid}"]
    )
    assert "own_lineage" in table.stdout
    assert "note: 1 of 2 targets' nearest reference is their own prompt" in table.stderr
    db.rm("run = 'train_3'", yes=True)
    assert _reference(db, gid) == {v for (r, _), v in ids.items() if r != 3}


def _block(doc: str, lang: str, after: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / doc).read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text.split(after, 1)[1], flags=re.S | re.M)[0]


def test_plugins_md_generator_declares_its_reference(db, tmp_path):
    ids = add_zoo(db)
    path = tmp_path / "nudge.py"
    path.write_text(_block("plugins.md", "python", "### A generator's reference set"))
    gid = db.generate(str(path), train=TRAIN).generator_run_id
    assert _reference(db, gid) == {ids[(r, STEPS - 1)] for r in range(RUNS)}
    rows = novelty(db, f"generator_run_id = {gid}", reference="kind = 'training'")
    assert len(rows) == 4 and all(r["own_lineage"] for r in rows)  # nearest = its parent


def test_duckdb_md_reference_queries_run(db, method):
    add_zoo(db)
    method(P.MethodInfo(reference_steps="final"))
    gid = db.generate("prompted", train=TRAIN).generator_run_id
    novelty(db, f"generator_run_id = {gid}", reference="kind = 'training'")
    sql = _block("duckdb.md", "sql", "## Reference sets")
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    assert len(statements) == 3
    per_run, own, counts = (db.sql(s) for s in statements)
    assert per_run == [
        {
            "generator_run_id": gid,
            "method": "prompted",
            "kind": "training",
            "n": RUNS,
            "first_step": STEPS - 1,
            "last_step": STEPS - 1,
        }
    ]
    assert len(own) == 1 and own[0]["reference_selection"] == "kind = 'training'"
    assert [(r["n"], r["own"]) for r in counts] == [(2, 1)]


def test_builtin_gpt_records_final_checkpoints_and_flags_its_prompts(db):
    write_toy_mlp_zoo(db)
    tiny = {"size": "small", "width": 16, "train_steps": 6, "diffusion_steps": 12, "batch": 8}
    gid = db.generate(
        "gpt", train="zoo = 'toy' AND split = 'train'", n=3, overrides=tiny, seed=2
    ).generator_run_id
    finals = db.sql("SELECT checkpoint_id FROM checkpoint_info WHERE split = 'train' AND step = 2")
    assert _reference(db, gid) == {r["checkpoint_id"] for r in finals}
    gen = f"generator_run_id = {gid} AND kind = 'generated'"
    # the paper's reference holds no prompt (they are step 0 of the held-out run)
    assert not any(r["own_lineage"] for r in novelty(db, gen))
    # every training checkpoint, prompts included: the flag is set exactly when the nearest
    # reference is the sample's own prompt
    prompt = db.checkpoints("run = 'toy-4' AND step = 0")[0]["checkpoint_id"]
    rows = novelty(db, gen, reference="kind = 'training'")
    assert [r["own_lineage"] for r in rows] == [r["nearest_id"] == prompt for r in rows]


def test_builtin_hyperrep_records_reconstructions_of_the_last_epoch(db):
    layout = Layout.from_arrays(
        {
            "conv1.weight": np.zeros((4, 1, 3, 3), np.float32),
            "conv1.bias": np.zeros(4, np.float32),
            "fc1.weight": np.zeros((6, 16), np.float32),
            "fc1.bias": np.zeros(6, np.float32),
            "fc2.weight": np.zeros((3, 6), np.float32),
            "fc2.bias": np.zeros(3, np.float32),
        }
    )
    rng = np.random.default_rng(0)
    last = set()
    for r in range(6):
        base = 0.3 * rng.normal(size=layout.n_params)
        rows = np.stack([base, base + 0.05 * rng.normal(size=base.shape)]).astype(np.float32)
        ids = db.add_checkpoints(
            layout,
            rows,
            run=f"t{r}",
            kind="training",
            zoo="cnnzoo",
            metrics=[{"accuracy": 0.5 + 0.05 * r}, {"accuracy": 0.55 + 0.05 * r}],
        )
        last.add(int(ids[-1]))
    gid = db.generate(
        "hyperrep", train="zoo = 'cnnzoo'", overrides={"size": "small"}, n=4
    ).generator_run_id
    ref = db.sql(
        "SELECT r.config, c.kind FROM reference_info c JOIN runs r ON r.name = c.run "
        f"WHERE c.generator_run_id = {gid}"
    )
    assert {x["kind"] for x in ref} == {"reconstructed"}
    assert {json.loads(x["config"])["source_checkpoint"] for x in ref} == last


def test_analyze_uses_the_recorded_reference_and_says_which(tmp_path):
    import wdb
    from analyses import engine, findings, synthetic
    from wdb.study.reference import record

    db = wdb.open(tmp_path / "db")
    made = synthetic.build(db, n_train=12, n_gen=6, n_base=4)
    opts = {"boundary": {"grid": 8}}

    def run():
        return engine.run(
            db, "memorization", "toygen", tmp_path / "r", made["task"], figures=False, options=opts
        )

    def training(rec):
        name = engine.table_name("memorization", "toygen", "selections")
        rows = db.sql(f"SELECT checkpoint_id FROM {name} WHERE selection = 'training'")
        return sorted(r["checkpoint_id"] for r in rows)

    rec = run()  # a run recorded before 0009: the spec's training selection, and a note
    assert training(rec) == sorted(made["training"])
    assert any("recorded no reference set" in n for n in rec["context"]["notes"])
    record(db, made["gen"], made["training"][:5])
    rec = run()
    assert training(rec) == sorted(made["training"][:5])
    note = f"reference ('training'): the reference set generator run {made['gen']} recorded (5)"
    assert note in rec["context"]["notes"]
    summary = db.sql(f"SELECT * FROM {engine.table_name('memorization', 'toygen', 'summary')}")
    assert all("n_own_lineage" in r for r in summary)
    f1 = findings.finding1(db, ["toygen"])
    assert any(f"recorded reference set (generator run {made['gen']})" in e for e in f1.evidence)
