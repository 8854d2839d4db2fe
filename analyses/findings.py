"""The paper's six findings (Zeng et al. 2025, "Generative Modeling of Weights:
Generalization or Memorization?"), checked against this database.

Each check reads the tables the analyses materialised (``a_memorization_<method>_summary`` …,
and the experiments' ``x_*`` tables) and returns a verdict with its numbers. The thresholds that
turn numbers into a verdict are stated in every verdict so a reader can disagree with them.
Verdicts (:func:`judge`): "reproduced" only when every method (or criterion) the finding names was
checked and agrees; a line names whoever disagrees and by how much, and what went unchecked.

1. generated much closer to training than training to itself: median min-L2 ratio
   generated / training < 0.5 for each of HR, G.pt, HyperDiffusion (all three are named);
2. HR near copies: mean max error-IoU of generated models ≥ 0.9;
3. no method but p-diff beats the noise baseline: a method "beats" noise when fewer than half of
   its generated models are dominated by a noise-baseline model (at least as novel AND at least
   as good, strictly better in one: ties do not dominate) and its models are high-performing (mean accuracy ≥ the worse noise group's − 0.05;
   shapes: mean Chamfer to test shapes ≤ 1.25 × the worse noise group's); P-diff (the methods
   whose ``MethodInfo.beats_noise`` is set) must beat it, every other method must not;
4. p-diff: generated farther from training than training from itself (ratio > 1), parameter values
   concentrated (mean per-parameter std below training's), and like an interpolation baseline
   (|accuracy gap| ≤ 0.02 and |max-IoU gap| ≤ 0.1 to averaged or gaussian);
5. modeling factors: no variant gains ≥ 10% mean min-L2 novelty while losing ≤ 1 accuracy point
   (or, for shapes, with MMD within 5% of the base);
6. symmetry: reconstructions of transformed weights disagree (1 − agreement) by more than 10% of
   the disagreement between different models — an invariant autoencoder would give 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyses.engine import table_name
from wdb.plugin import WdbError

PAPER = {
    1: "HR, G.pt, HyperDiffusion: generated models are much closer to their nearest training "
    "model than training models are to each other.",
    2: "Hyper-Representations' generated models have max similarity ≈ 0.95–1.0 (near copies).",
    3: "Except p-diff, no method beats the noise baseline on the accuracy–novelty trade-off.",
    4: "P-diff's generated models are farther from training than training models are from each "
    "other, its values concentrate around the training mean, and it behaves like the averaged / "
    "gaussian interpolation baselines.",
    5: "Modeling-factor changes do not buy novelty without losing accuracy.",
    6: "Permutation/scaling augmentation does not make the HR autoencoder invariant "
    "(paper: accuracy diff 6.0% permuted, 5.8% scaled vs 12.7% between different models); "
    "HyperDiffusion with permutation augmentation fails to produce shapes.",
}


class _DisplayNames(dict):
    """method → display name, from the generator registry (``MethodInfo.display``)."""

    def __missing__(self, method: str) -> str:
        from wdb.plugin import method_info

        self[method] = method_info(method).display if method else str(method)
        return self[method]

    def get(self, method: Any, default: Any = None) -> Any:  # noqa: D102 - dict.get, looked up
        return self[method] if isinstance(method, str) else default


NAMES = _DisplayNames()


@dataclass
class Finding:
    number: int
    verdict: str  # reproduced | not reproduced | partially reproduced | not evaluated
    evidence: list[str] = field(default_factory=list)
    why: str = ""

    @property
    def statement(self) -> str:
        return PAPER[self.number]

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "statement": self.statement,
            "verdict": self.verdict,
            "evidence": self.evidence,
            "why": self.why,
        }


def _table(db, name: str) -> list[dict] | None:
    try:
        return db.sql(f"SELECT * FROM {name}")
    except Exception:  # noqa: BLE001 - a missing table just means "not evaluated"
        return None


def _by_sel(rows: list[dict] | None) -> dict[str, dict]:
    return {r["selection"]: r for r in rows or []}


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _fmt(x: Any, nd: int = 3) -> str:
    x = _f(x)
    return "n/a" if not np.isfinite(x) else f"{x:.{nd}g}"


def judge(
    f: Finding,
    checks: dict[str, tuple[bool, str]],
    named: list[str] | None = None,
    label: Any = None,
) -> None:
    """Set ``f.verdict`` from one check per method (or criterion): ``name → (agrees with the
    paper, how it came out)``.

    "reproduced" only when every name the finding makes (``named``, default: the checked ones)
    was checked and agrees; "not reproduced" when none agrees; "partially reproduced" otherwise.
    An evidence line then says who disagrees and by how much, and what could not be checked, so
    no line of the summary contradicts its verdict.
    """
    label = label or NAMES.__getitem__
    named = list(named if named is not None else checks)
    missing = [m for m in named if m not in checks]
    wrong = {m: how for m, (ok, how) in checks.items() if not ok}
    if not checks:
        f.verdict = "not evaluated"
        return
    if not wrong and not missing:
        f.verdict = "reproduced"
    elif len(wrong) == len(checks):
        f.verdict = "not reproduced"
    else:
        f.verdict = "partially reproduced"
    if wrong:
        f.evidence.append(
            "disagrees with the paper: "
            + "; ".join(f"{label(m)} ({how})" for m, how in wrong.items())
        )
    if missing:
        f.evidence.append("not evaluated here: " + ", ".join(label(m) for m in missing))


#: the methods the paper's finding 1 names (its claim is about these three)
MEMORIZERS = ("hyperrep", "gpt", "hyperdiffusion")
#: the four methods the paper studies (finding 3 makes a claim about each)
PAPER_METHODS = ("hyperrep", "gpt", "hyperdiffusion", "pdiff")


def finding1(db, methods: list[str]) -> Finding:
    from wdb.plugin import method_info

    f = Finding(1, "not evaluated")
    checks: dict[str, tuple[bool, str]] = {}
    for m in [*MEMORIZERS, *[m for m in methods if m not in PAPER_METHODS]]:
        if m not in methods:
            continue
        s = _by_sel(_table(db, table_name("memorization", m, "summary")))
        g, t = (
            _f(s.get("generated", {}).get("median_min_l2")),
            _f(s.get("training", {}).get("median_min_l2")),
        )
        if not (np.isfinite(g) and np.isfinite(t) and t > 0):
            continue
        ratio = g / t
        metric = "aligned L2" if method_info(m).aligned else "L2"
        claim = "" if m in MEMORIZERS else " (not a method the paper's claim names)"
        f.evidence.append(
            f"{NAMES[m]}: median min-{metric} to training {_fmt(g)} (generated) vs {_fmt(t)} "
            f"(training, self excluded); ratio {ratio:.2f} ({'< 0.5' if ratio < 0.5 else '≥ 0.5'})"
            + claim
        )
        own = lineage_line(db, m, s.get("generated", {}))
        if own:
            f.evidence.append(own)
        if m in MEMORIZERS:
            checks[m] = (ratio < 0.5, f"ratio {ratio:.2f}, paper: < 0.5")
    judge(f, checks, list(MEMORIZERS))
    if not checks:
        f.why = "no HR / G.pt / HyperDiffusion samples with min-L2 tables in this database"
    return f


def reference_used(db, m: str) -> str:
    """The reference set m's latest generator run recorded (its description), or the fallback."""
    import json

    from wdb.plugin import recorded_references

    runs = db.sql(
        "SELECT id, config FROM generator_runs WHERE method = :m AND status = 'done' "
        "ORDER BY id DESC LIMIT 1",
        {"m": m},
    )
    if not runs:
        return ""
    gid = int(runs[0]["id"])
    if not recorded_references(db, [gid]):
        return "the analysis spec's training selection (no recorded reference set)"
    try:
        rule = json.loads(runs[0]["config"] or "{}").get("reference")
    except (TypeError, ValueError):
        rule = None
    return f"{rule or 'its recorded reference set'} (generator run {gid})"


def lineage_line(db, m: str, row: dict) -> str:
    """Which reference m was compared with, and how many generated models' nearest reference was
    their own prompt/source/parent (the summary's ``n_own_lineage``): their distance then
    measures provenance, not memorization."""
    ref = reference_used(db, m)
    parts = [f"reference: {ref}"] if ref else []
    k, n = row.get("n_own_lineage"), row.get("n")
    if k is not None and n:
        parts.append(
            f"{int(k)} of {int(n)} generated models' nearest reference is their own "
            "prompt/source/parent"
            + (" (their min-L2 measures provenance, not memorization)" if int(k) else "")
        )
    return f"{NAMES[m]}: " + "; ".join(parts) if parts else ""


def finding2(db, methods: list[str]) -> Finding:
    f = Finding(2, "not evaluated")
    if "hyperrep" not in methods:
        f.why = "no Hyper-Representations samples in this database"
        return f
    s = _by_sel(_table(db, table_name("memorization", "hyperrep", "summary")))
    g = _f(s.get("generated", {}).get("mean_max_iou"))
    t = _f(s.get("training", {}).get("mean_max_iou"))
    if not np.isfinite(g):
        f.why = "HR samples have no error sets (evaluate them: `wdb evaluate`)"
        return f
    f.verdict = "reproduced" if g >= 0.9 else "not reproduced"
    f.evidence.append(
        f"mean max error-set IoU of HR generated models {_fmt(g)} (threshold ≥ 0.9; "
        f"training reconstructions among themselves {_fmt(t)})"
    )
    return f


def _dominated_share(
    gen: list[tuple], noise: list[tuple], higher_x_novel: bool, higher_y_better: bool
) -> float:
    if not gen or not noise:
        return float("nan")
    # Pareto domination: at least as novel AND at least as good, and strictly better in one.
    # Ties alone do not dominate: when every model's max IoU is 1.0 (P-diff's BN-only space, where
    # all error sets coincide) a noise model of equal accuracy is no better than the sample.
    N = np.array(noise, float)
    dom = 0
    for x, y in gen:
        nov = N[:, 0] >= x if higher_x_novel else N[:, 0] <= x
        good = N[:, 1] >= y if higher_y_better else N[:, 1] <= y
        strictly = (N[:, 0] != x) | (N[:, 1] != y)
        dom += bool((nov & good & strictly).any())
    return dom / len(gen)


def saturated(db, m: str) -> float | None:
    """Share of m's training models whose max error-set IoU with another training model is 1:
    near 1, error sets barely differ at this scale and IoU cannot tell a copy from a new model
    (measured on the demo's P-diff zoo: 300 BN-only checkpoints share 13 distinct error sets)."""
    rows = _table(db, table_name("memorization", m, "scatter")) or []
    iou = [r["max_iou"] for r in rows if r["selection"] == "training" and r["max_iou"] is not None]
    return float(np.mean(np.asarray(iou, float) >= 1 - 1e-9)) if iou else None


def iou_context(db, m: str) -> str | None:
    """Which eval set m's error sets came from (name, items) and how similar its training models
    are among themselves (median / 99th percentile / max of their max IoU, self excluded): the
    scale against which the generated models' max IoU is read."""
    rows = _table(db, table_name("memorization", m, "novelty")) or []
    iou = np.asarray(
        [r["max_iou"] for r in rows if r["selection"] == "training" and r["max_iou"] is not None],
        float,
    )
    rel_ids = sorted({int(r["relation_id"]) for r in rows if r.get("relation_id") is not None})
    sets: list[str] = []
    if rel_ids:
        for r in db.sql(
            f"SELECT params FROM relations WHERE id IN ({','.join(map(str, rel_ids))})"
        ):
            es = json.loads(r["params"] or "{}").get("eval_set_id")
            if es is None:
                continue
            for e in db.sql("SELECT name, n_items FROM eval_sets WHERE id = :e", {"e": int(es)}):
                label = f"{e['name']} ({e['n_items']:,} items)" if e["n_items"] else e["name"]
                if label not in sets:
                    sets.append(label)
    if not len(iou) and not sets:
        return None
    out = f"error sets of {NAMES[m]} on {', '.join(sets) or 'an unrecorded eval set'}"
    if len(iou):
        out += (
            f"; its training models' max IoU among themselves: median {np.median(iou):.4f}, "
            f"99th percentile {np.percentile(iou, 99):.4f}, max {iou.max():.4f}"
        )
    return out


def tradeoff(db, m: str) -> tuple[float, str, bool] | None:
    """(share of m's generated models dominated by a noise-baseline model, description, whether
    the generated models perform as well as the noise baselines)."""
    rows = _table(db, table_name("memorization", m, "scatter"))
    if rows:
        hx, hy, xs, ys = False, True, "max_iou", "accuracy"
    else:
        rows = _table(db, table_name("memorization", m, "shape_scatter"))
        if not rows:
            return None
        hx, hy, xs, ys = True, False, "min_chamfer_train", "min_chamfer_test"
    gen = [(r[xs], r[ys]) for r in rows if r["selection"] == "generated"]
    noise = [(r[xs], r[ys]) for r in rows if str(r["selection"]).startswith("noise")]
    share = _dominated_share(gen, noise, hx, hy)
    if not np.isfinite(share):
        return None
    mean = {
        s: (
            np.mean([r[xs] for r in rows if r["selection"] == s]),
            np.mean([r[ys] for r in rows if r["selection"] == s]),
        )
        for s in {r["selection"] for r in rows}
    }
    noise_perf = [v[1] for s, v in mean.items() if s.startswith("noise")]
    g = mean["generated"][1]
    # "high-performing": accuracy at most 5 points below the worse noise group (shapes: Chamfer
    # to test shapes at most 25% above it); novel but broken models do not beat noise
    performs = g >= min(noise_perf) - 0.05 if hy else g <= 1.25 * max(noise_perf)
    desc = ", ".join(f"{s} ({xs} {_fmt(v[0])}, {ys} {_fmt(v[1])})" for s, v in sorted(mean.items()))
    return share, desc, bool(performs)


def finding3(db, methods: list[str]) -> Finding:
    """Every method is expected not to beat noise, except those whose ``MethodInfo.beats_noise``
    says the paper found they do (P-diff): a P-diff that does not beat noise contradicts it."""
    from wdb.plugin import method_info

    f = Finding(3, "not evaluated")
    checks: dict[str, tuple[bool, str]] = {}
    unscored = []
    for m in methods:
        res = tradeoff(db, m)
        if res is None:
            unscored.append(m)
            continue
        share, desc, performs = res
        beats = share < 0.5 and performs
        expected = method_info(m).beats_noise
        why = f"{share:.0%} of generated models dominated by a noise model" + (
            "" if performs else "; generated models perform clearly worse than noise"
        )
        f.evidence.append(
            f"{NAMES[m]}: {why} → {'beats' if beats else 'does not beat'} noise (paper: "
            f"{'beats' if expected else 'does not beat'}); means: {desc}"
        )
        checks[m] = (beats == expected, f"{'beats' if beats else 'does not beat'} noise, {why}")
        context = iou_context(db, m)
        if context:
            f.evidence.append(context)
        sat = saturated(db, m)
        if sat is not None and sat >= 0.5:
            f.evidence.append(
                f"caveat for {NAMES[m]}: {sat:.0%} of its training models already have max IoU 1 "
                "with another training model (their error sets coincide), so on this eval set "
                "novelty by IoU cannot separate a copy from a new model; its verdict rests on "
                "accuracy ties"
            )
    judge(f, checks, [*PAPER_METHODS, *[m for m in methods if m not in PAPER_METHODS]])
    if not checks:
        f.why = (
            f"no accuracy–novelty table with noise baselines for {', '.join(unscored)}"
            if unscored
            else "no generated samples analysed in this database"
        )
    return f


def finding4(db, methods: list[str]) -> Finding:
    f = Finding(4, "not evaluated")
    if "pdiff" not in methods:
        f.why = "no P-diff samples in this database"
        return f
    s = _by_sel(_table(db, table_name("memorization", "pdiff", "summary")))
    checks: dict[str, tuple[bool, str]] = {}
    g, t = (
        _f(s.get("generated", {}).get("median_min_l2")),
        _f(s.get("training", {}).get("median_min_l2")),
    )
    if np.isfinite(g) and np.isfinite(t) and t > 0:
        checks["farther than training"] = (g / t > 1, f"ratio {g / t:.2f}, paper: > 1")
        f.evidence.append(
            f"median min-L2 to training: generated {_fmt(g)} vs training {_fmt(t)} "
            f"(ratio {g / t:.2f}; paper: > 1)"
        )
    c = _by_sel(_table(db, table_name("memorization", "pdiff", "concentration")))
    r = _f(c.get("generated", {}).get("std_ratio_to_training"))
    if np.isfinite(r):
        checks["concentrated"] = (r < 1, f"std ratio {r:.2f}, paper: < 1")
        f.evidence.append(
            f"per-parameter std of generated values / training values = {r:.2f} "
            f"(< 1 = concentrated); mean |shift of the mean| {_fmt(c['generated'].get('mean_abs_shift'))}"
        )
    ga, gi = (
        _f(s.get("generated", {}).get("mean_accuracy")),
        _f(s.get("generated", {}).get("mean_max_iou")),
    )
    close: list[tuple[bool, str]] = []
    for b in ("average", "gaussian"):
        if b not in s:
            continue
        da = abs(ga - _f(s[b].get("mean_accuracy")))
        di = abs(gi - _f(s[b].get("mean_max_iou")))
        ok = bool(da <= 0.02 and di <= 0.1)
        close.append((ok, f"vs {b}: |Δ accuracy| {_fmt(da, 2)}, |Δ max IoU| {_fmt(di, 2)}"))
        f.evidence.append(
            f"vs {b}: accuracy {_fmt(ga)} vs {_fmt(s[b].get('mean_accuracy'))} (|Δ| {_fmt(da, 2)}), "
            f"max IoU {_fmt(gi)} vs {_fmt(s[b].get('mean_max_iou'))} (|Δ| {_fmt(di, 2)})"
        )
    if close:
        checks["like an interpolation"] = (
            any(ok for ok, _ in close),
            "; ".join(how for _, how in close) + " (paper: ≤ 0.02 and ≤ 0.1 to one of them)",
        )
    named = ["farther than training", "concentrated", "like an interpolation"]
    judge(f, checks, named, label=str)
    return f


def finding5(db, records: list[dict]) -> Finding:
    f = Finding(5, "not evaluated", why="run `wdb experiment modeling-factors` (needs a generator)")
    checks: dict[str, tuple[bool, str]] = {}
    for rec in records:
        if rec.get("experiment") != "modeling-factors":
            continue
        rows = _table(db, rec["table"]) or []
        base = next((r for r in rows if r["variant"] == "base"), None)
        if base is None:
            continue
        perf = "accuracy" if rec.get("performance") == "accuracy" else "mmd"
        if perf == "accuracy" and _f(base["performance"]) < 0.2:
            f.why = (
                f"{NAMES.get(rec['method'], rec['method'])}'s samples are at chance level at this "
                f"size (base accuracy {_fmt(base['performance'])}): rerun `wdb experiment "
                "modeling-factors --size default`"
            )
            continue
        bad = []
        for r in rows:
            if r["variant"] == "base" or r.get("mean_min_l2") is None:
                continue
            novel = _f(r["mean_min_l2"]) >= 1.1 * _f(base["mean_min_l2"])
            if perf == "accuracy":
                keeps = _f(r["performance"]) >= _f(base["performance"]) - 0.01
            else:
                keeps = _f(r["performance"]) <= 1.05 * _f(base["performance"])
            if novel and keeps:
                bad.append(r["variant"])
        checks[rec["method"]] = (
            not bad,
            f"gained ≥ 10% novelty without losing {perf}: {', '.join(bad)}",
        )
        f.evidence.append(
            f"{NAMES.get(rec['method'], rec['method'])} ({perf}): base novelty "
            f"{_fmt(base['mean_min_l2'])}, {perf} {_fmt(base['performance'])}; "
            + "; ".join(
                f"{r['variant']}: {_fmt(r['mean_min_l2'])}, {_fmt(r['performance'])}"
                for r in rows
                if r["variant"] != "base"
            )
            + (f" — gained novelty without losing {perf}: {', '.join(bad)}" if bad else "")
        )
    if checks:
        f.why = ""
        judge(f, checks)
    return f


def finding6(db, records: list[dict]) -> Finding:
    f = Finding(6, "not evaluated", why="run `wdb experiment symmetry` (needs hyperrep)")
    checks: dict[str, tuple[bool, str]] = {}
    for rec in records:
        if rec.get("experiment") == "symmetry":
            rows = {r["comparison"]: r for r in _table(db, rec["table"]) or []}
            ref = rows.get("different models")
            if not ref:
                continue
            if "reconstruction_accuracy" in ref and _f(ref["reconstruction_accuracy"]) < 0.2:
                f.evidence.append(
                    "caution: the autoencoder's reconstructions are at chance level "
                    f"(accuracy {_fmt(ref['reconstruction_accuracy'])}); train it longer"
                )
            for k in ("permuted", "scaled"):
                if k in rows:
                    ok = _f(rows[k]["disagreement"]) > 0.1 * _f(ref["disagreement"])
                    checks[f"HR autoencoder, {k}"] = (
                        ok,
                        f"1 − agreement {100 * _f(rows[k]['disagreement']):.1f}% ≤ 10% of "
                        "different models': nearly invariant",
                    )
                    f.evidence.append(
                        f"HR autoencoder, {k} vs original: accuracy diff "
                        f"{100 * _f(rows[k]['accuracy_diff']):.1f}%, 1 − agreement "
                        f"{100 * _f(rows[k]['disagreement']):.1f}% (different models: "
                        f"{100 * _f(ref['accuracy_diff']):.1f}%, {100 * _f(ref['disagreement']):.1f}%)"
                    )
        if rec.get("experiment") == "hd-augmentation":
            rows = _table(db, rec["table"]) or []
            base = next((r for r in rows if r["augment_permutations"] == 0), None)
            for r in rows:
                f.evidence.append(
                    f"HyperDiffusion +{r['augment_permutations']} permutations: "
                    f"{100 * _f(r['nonempty_fraction']):.0f}% non-empty meshes, mean Chamfer to "
                    f"training {_fmt(r['mean_chamfer_train'])}"
                )
            if base is not None and len(rows) > 1:
                worse = [
                    r
                    for r in rows
                    if r["augment_permutations"] > 0
                    and (
                        _f(r["nonempty_fraction"]) < _f(base["nonempty_fraction"])
                        or _f(r["mean_chamfer_train"]) > _f(base["mean_chamfer_train"])
                    )
                ]
                checks["HyperDiffusion augmentation"] = (
                    bool(worse),
                    "augmented runs make no fewer shapes and no worse Chamfer",
                )
    if checks:
        f.why = ""
        judge(f, checks, label=str)
    return f


def evaluate(db, methods: list[str], experiments: list[dict]) -> list[Finding]:
    """All six findings, in order."""
    out = []
    for fn, arg in (
        (finding1, methods),
        (finding2, methods),
        (finding3, methods),
        (finding4, methods),
        (finding5, experiments),
        (finding6, experiments),
    ):
        try:
            out.append(fn(db, arg))
        except (WdbError, KeyError, TypeError, ValueError) as exc:
            n = len(out) + 1
            out.append(Finding(n, "not evaluated", why=f"{type(exc).__name__}: {exc}"))
    return out


def markdown(findings: list[Finding], header: str = "") -> str:
    """``summary.md``: each finding, its verdict and the numbers."""
    lines = ["# Does this database reproduce the paper's findings?", ""]
    if header:
        lines += [header, ""]
    lines += [
        "Zeng et al. 2025, *Generative Modeling of Weights: Generalization or Memorization?* —",
        "thresholds for each verdict are in `analyses/findings.py`.",
        "",
    ]
    for f in findings:
        v = f.verdict + (f": {f.why}" if f.verdict == "not evaluated" else "")
        lines += [f"## Finding {f.number}: {v}", "", f"*Paper:* {f.statement}", ""]
        lines += [f"- {e}" for e in f.evidence] or ["- (no numbers)"]
        if f.why and f.verdict != "not evaluated":
            lines.append(f"- note: {f.why}")
        lines.append("")
    return "\n".join(lines)
