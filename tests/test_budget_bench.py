"""benchmarks/exp_budget.py: the table and figure writer (the experiment itself takes hours)."""

from __future__ import annotations

from tests.benchmod import load


def _module():
    return load("exp_budget")


def _rec(method, budget, acc, ratio):
    return {
        "method": method,
        "budget": budget,
        "steps": int(1000 * budget),
        "accuracy_generated": acc,
        "accuracy_training": 0.9,
        "median_min_l2_generated": ratio * 8.0 if ratio is not None else None,
        "median_min_l2_training": 8.0,
        "novelty_ratio": ratio,
        "fit_sample_s": 60.0 * budget,
        "budget_wall_s": 80.0 * budget,
    }


def test_write_report_table_and_figure(tmp_path):
    mod = _module()
    results = [
        _rec("gpt", 2, 0.82, 0.91),
        _rec("gpt", 1, 0.75, 0.97),
        _rec("hyperrep", 1, 0.6, None),
    ]
    md, png = mod.write_report(
        results, tmp_path / "docs", "python benchmarks/exp_budget.py", "loaded"
    )
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| G.pt")]
    assert [r.split("|")[2].strip() for r in rows] == ["1x", "2x"]  # sorted by budget
    assert "0.750 (0.900)" in rows[0] and "| 0.97 |" in rows[0] and "| 120 |" in rows[1]
    assert "| n/a |" in next(r for r in text.splitlines() if r.startswith("| Hyper"))
    assert "Command: `python benchmarks/exp_budget.py`" in text and "loaded" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "budget.png" in text


def test_base_steps_reads_the_demo_plan():
    mod = _module()
    assert mod.base_steps("gpt", {"size": "default", "train_steps": 123}) == 123
    assert mod.base_steps("hyperrep", {"size": "default"}) == 2000  # the default recipe's
