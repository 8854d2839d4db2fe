"""Verdicts follow the rule: "reproduced" only when every named method agrees; otherwise the
summary says who disagrees and by how much. Fed synthetic tables that contradict each finding."""

from __future__ import annotations

import pytest

from analyses import findings as F
from analyses.engine import table_name, write_table


@pytest.fixture
def db(tmp_path):
    import wdb

    return wdb.open(tmp_path / "db")


def summary(db, method: str, **by_selection: dict) -> None:
    sels = list(by_selection)
    cols = {"selection": sels}
    for key in ("median_min_l2", "mean_max_iou", "mean_accuracy"):
        cols[key] = [float(by_selection[s].get(key, float("nan"))) for s in sels]
    write_table(db, table_name("memorization", method, "summary"), cols)


def ratio(db, method: str, r: float) -> None:
    summary(db, method, generated={"median_min_l2": r}, training={"median_min_l2": 1.0})


def scatter(
    db, method: str, gen: list[tuple], noise: list[tuple], training: list[tuple] = ()
) -> None:
    rows = [("generated", *g) for g in gen] + [("noise_1", *n) for n in noise]
    rows += [("training", *t) for t in training]
    write_table(
        db,
        table_name("memorization", method, "scatter"),
        {
            "selection": [r[0] for r in rows],
            "max_iou": [r[1] for r in rows],
            "accuracy": [r[2] for r in rows],
        },
    )


def test_finding1_names_the_method_that_does_not_memorise(db):
    for m, r in (("hyperrep", 0.2), ("gpt", 0.97), ("hyperdiffusion", 0.3)):
        ratio(db, m, r)
    f = F.finding1(db, ["hyperrep", "gpt", "hyperdiffusion"])
    assert f.verdict == "partially reproduced"
    assert any("disagrees" in e and "G.pt (ratio 0.97" in e for e in f.evidence)
    ratio(db, "gpt", 0.1)
    assert F.finding1(db, ["hyperrep", "gpt", "hyperdiffusion"]).verdict == "reproduced"
    # one of three named methods checked: never "reproduced"
    f = F.finding1(db, ["hyperrep"])
    assert f.verdict == "partially reproduced"
    assert any(e.startswith("not evaluated here: G.pt, HyperDiffusion") for e in f.evidence)
    for m in ("hyperrep", "gpt", "hyperdiffusion"):
        ratio(db, m, 0.9)
    assert F.finding1(db, ["hyperrep", "gpt", "hyperdiffusion"]).verdict == "not reproduced"


def test_finding2_contradicted_by_novel_error_sets(db):
    summary(db, "hyperrep", generated={"mean_max_iou": 0.5}, training={"mean_max_iou": 0.7})
    assert F.finding2(db, ["hyperrep"]).verdict == "not reproduced"


def test_finding3_pdiff_not_beating_noise_contradicts_the_paper(db):
    dominated = dict(gen=[(0.9, 0.80)], noise=[(0.8, 0.85)])  # noise: more novel and better
    beating = dict(gen=[(0.8, 0.85)], noise=[(0.9, 0.80)])
    for m in ("hyperrep", "gpt", "hyperdiffusion", "pdiff"):
        scatter(db, m, **dominated)
    f = F.finding3(db, ["hyperrep", "gpt", "hyperdiffusion", "pdiff"])
    assert f.verdict == "partially reproduced"
    line = next(e for e in f.evidence if e.startswith("disagrees"))
    assert "P-diff (does not beat noise, 100% of generated models dominated" in line
    assert "G.pt" not in line
    scatter(db, "pdiff", **beating)
    assert F.finding3(db, ["hyperrep", "gpt", "hyperdiffusion", "pdiff"]).verdict == "reproduced"
    scatter(db, "gpt", **beating)  # G.pt beating noise contradicts the paper too
    f = F.finding3(db, ["hyperrep", "gpt", "hyperdiffusion", "pdiff"])
    assert f.verdict == "partially reproduced" and "G.pt (beats noise" in f.evidence[-1]


def test_finding3_ties_at_iou_one_do_not_dominate(db):
    """P-diff's BN-only space: every error set equal (max IoU 1.0), equal accuracy."""
    scatter(db, "pdiff", gen=[(1.0, 0.9)] * 3, noise=[(1.0, 0.9)] * 3)
    share, _, performs = F.tradeoff(db, "pdiff")
    assert share == 0.0 and performs
    scatter(db, "pdiff", gen=[(1.0, 0.9)], noise=[(1.0, 0.95)])  # as novel, strictly better
    assert F.tradeoff(db, "pdiff")[0] == 1.0


def test_finding3_says_when_error_sets_are_saturated(db):
    """Training models that all share error sets (max IoU 1): the verdict carries a caveat."""
    scatter(db, "pdiff", gen=[(1.0, 0.9)], noise=[(0.9, 0.9)], training=[(1.0, 0.9)] * 4)
    f = F.finding3(db, ["pdiff"])
    assert any(e.startswith("caveat for P-diff: 100% of its training models") for e in f.evidence)
    scatter(db, "pdiff", gen=[(1.0, 0.9)], noise=[(0.9, 0.9)], training=[(0.7, 0.9)] * 4)
    assert not any(e.startswith("caveat") for e in F.finding3(db, ["pdiff"]).evidence)


def test_finding3_names_the_eval_set_scale(db):
    """The training models' own max IoU (all of them, from the novelty table) is the scale the
    generated models' is read against; the line says so, with the eval set when recorded."""
    scatter(db, "pdiff", gen=[(0.99, 0.9)], noise=[(0.95, 0.9)], training=[(0.999, 0.9)])
    iou = [0.99, 0.998, 1.0, 0.97, 0.999]
    write_table(
        db,
        table_name("memorization", "pdiff", "novelty"),
        {"selection": ["training"] * 5 + ["generated"], "max_iou": [*iou, 0.5]},
    )
    line = F.iou_context(db, "pdiff")
    assert line.startswith("error sets of P-diff on an unrecorded eval set")
    assert "median 0.9980" in line and "max 1.0000" in line
    assert line in F.finding3(db, ["pdiff"]).evidence


def test_finding4_names_the_failed_criterion(db):
    summary(
        db,
        "pdiff",
        generated={"median_min_l2": 0.8, "mean_accuracy": 0.9, "mean_max_iou": 0.95},
        training={"median_min_l2": 1.0},
        average={"mean_accuracy": 0.9, "mean_max_iou": 0.95},
    )
    write_table(
        db,
        table_name("memorization", "pdiff", "concentration"),
        {"selection": ["generated"], "std_ratio_to_training": [0.5], "mean_abs_shift": [0.01]},
    )
    f = F.finding4(db, ["pdiff"])
    assert f.verdict == "partially reproduced"
    assert any("farther than training (ratio 0.80, paper: > 1)" in e for e in f.evidence)


def test_finding5_and_6_contradicted(db):
    write_table(
        db,
        "x_mf",
        {
            "variant": ["base", "wider"],
            "mean_min_l2": [1.0, 1.2],
            "performance": [0.8, 0.8],
        },
    )
    rec = {"experiment": "modeling-factors", "method": "hyperrep", "table": "x_mf"}
    f = F.finding5(db, [{**rec, "performance": "accuracy"}])
    assert f.verdict == "not reproduced" and "wider" in f.evidence[-1]
    write_table(
        db,
        "x_sym",
        {
            "comparison": ["different models", "permuted"],
            "disagreement": [0.3, 0.01],
            "accuracy_diff": [0.1, 0.0],
        },
    )
    f = F.finding6(db, [{"experiment": "symmetry", "table": "x_sym"}])
    assert f.verdict == "not reproduced" and "nearly invariant" in f.evidence[-1]
