"""The HTML report and summary.md, from an analysis of a tiny synthetic database.

The method is called ``pdiff`` here so the P-diff-only parts (KDE, t-SNE, interpolation, the
concentration table, finding 4) run too. The browser check needs Debian's ``chromium``: the test
set-up installs it (``tests/apt_install.sh chromium ...``, run by ``make test``); the test skips, saying
why, only where it cannot be installed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html import unescape as html_unescape
from pathlib import Path

import numpy as np
import pytest

from analyses import engine, findings, report, synthetic


@pytest.fixture(scope="module")
def built(tmp_path_factory, module_catalog):
    import wdb

    root = tmp_path_factory.mktemp("report")
    db = wdb.open(root / "db", catalog_url=module_catalog)
    made = synthetic.build(db, n_train=16, n_gen=8, n_base=8, method="pdiff")
    engine.run(
        db,
        "memorization",
        method="pdiff",
        out=root / "out",
        task=made["task"],
        options={"boundary": {"grid": 16}},
    )
    rep = report.build(db, root / "out")
    return db, made, rep, root / "out"


def test_html_is_self_contained_with_every_figure_and_its_table(built):
    db, _, rep, out = built
    html = Path(rep["html"]).read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', html)
    figs = sorted((out / "figures").glob("*.png"))
    assert len(srcs) == len(figs) >= 7
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "<link" not in html and "<script" not in html and 'src="http' not in html
    for name in ("a_memorization_pdiff_tsne", "a_memorization_pdiff_min_l2_hist"):
        assert f"SELECT * FROM {name}" in html
    assert "generate_series(0, 14)" in html  # the SQL behind the histogram table is shown


def test_summary_states_all_six_findings(built):
    _, _, rep, _ = built
    text = Path(rep["summary"]).read_text()
    heads = re.findall(r"^## Finding (\d): (.+)$", text, flags=re.M)
    assert [int(n) for n, _ in heads] == [1, 2, 3, 4, 5, 6]
    verdicts = {int(n): v for n, v in heads}
    assert verdicts[1].startswith("not evaluated:")  # no HR / G.pt / HD here, and it says why
    assert verdicts[4].split(":")[0] in ("reproduced", "partially reproduced", "not reproduced")
    assert "median min-L2" in text


def test_concentration_table_matches_numpy(built):
    db, made, _, _ = built
    rows = {r["selection"]: r for r in db.sql("SELECT * FROM a_memorization_pdiff_concentration")}
    Wt, Wg = db.weights(made["training"]), db.weights(made["generated"])
    want = Wg.astype(np.float64).std(0).mean() / Wt.astype(np.float64).std(0).mean()
    assert rows["generated"]["std_ratio_to_training"] == pytest.approx(want, rel=1e-6)
    shift = np.abs(Wg.astype(np.float64).mean(0) - Wt.astype(np.float64).mean(0)).mean()
    assert rows["generated"]["mean_abs_shift"] == pytest.approx(shift, rel=1e-6)


def test_finding3_domination_matches_a_direct_count(built):
    db, _, _, _ = built
    sc = db.sql("SELECT * FROM a_memorization_pdiff_scatter")
    gen = [(r["max_iou"], r["accuracy"]) for r in sc if r["selection"] == "generated"]
    noise = [(r["max_iou"], r["accuracy"]) for r in sc if r["selection"].startswith("noise")]
    direct = np.mean(
        [any(nx <= x and ny >= y and (nx, ny) != (x, y) for nx, ny in noise) for x, y in gen]
    )
    share, _, _ = findings.tradeoff(db, "pdiff")
    assert share == pytest.approx(direct)


def _chromium() -> str | None:
    for b in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(b):
            return shutil.which(b)
    script = Path(__file__).with_name("apt_install.sh")
    res = subprocess.run(
        ["sh", str(script), "chromium", "chromium", "chromium-browser", "google-chrome"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        pytest.skip(f"headless Chromium cannot be installed here: {res.stderr.strip()[:200]}")
    return shutil.which("chromium")


PROBE = (
    "<script>window.addEventListener('load',()=>{const r=[...document.images].map("
    "i=>i.complete&&i.naturalWidth>0?i.naturalWidth:0);"
    "const links=[...document.querySelectorAll('a[href^=\"#\"]')].map(a=>a.getAttribute('href'));"
    "const dead=links.filter(h=>!document.getElementById(decodeURIComponent(h.slice(1))));"
    "const alts=[...document.images].map(i=>i.alt);"
    "const p=document.createElement('pre');p.id='probe';p.textContent='IMGS '+JSON.stringify(r)"
    "+' LINKS '+JSON.stringify({n:links.length,dead:dead})+' ALTS '+JSON.stringify(alts);"
    "document.body.appendChild(p);});</script>"
)


def test_every_image_loads_in_headless_chromium(built, tmp_path):
    _, _, rep, _ = built
    exe = _chromium()
    html = Path(rep["html"]).read_text()
    n = len(re.findall(r"<img", html))
    page = tmp_path / "probe.html"  # the report itself plus a probe that lists naturalWidth
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    res = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r'<pre id="probe">IMGS (\[[^<]*?\]) LINKS (.*?) ALTS (.*?)</pre>', res.stdout)
    assert m, f"chromium printed no probe: {res.stderr[-500:]}"
    widths = json.loads(m.group(1))
    assert len(widths) == n > 0
    assert all(w > 0 for w in widths), widths
    # the contents list: every in-page link lands on an element of the page
    links = json.loads(html_unescape(m.group(2)))
    assert links["n"] >= n + 2 and links["dead"] == [], links
    # every image says in its alt text what its axes are (and no axis is unlabelled)
    for alt in json.loads(html_unescape(m.group(3))):
        assert "x: " in alt and "y: " in alt and "(unlabelled)" not in alt, alt


def test_contents_link_to_every_section_and_figure(built):
    _, _, rep, out = built
    html = Path(rep["html"]).read_text()
    ids = set(re.findall(r"id='([^']+)'", html)) | set(re.findall(r"id=([\w-]+)[ >]", html))
    links = re.findall(r"href='#([^']+)'", html)
    assert set(links) <= ids, set(links) - ids
    rec = json.loads((out / "memorization_pdiff.json").read_text())
    for f in rec["figures"]:  # each drawn figure is in the contents, by its anchor
        assert report.anchor("memorization", "pdiff", f["name"]) in links
    assert "findings" in links and "memorization-pdiff-tables" in links


def test_every_figure_labels_its_axes_units_and_legend(built):
    """Read from matplotlib's own objects before saving (``figures.axes_labels``)."""
    _, _, _, out = built
    rec = json.loads((out / "memorization_pdiff.json").read_text())
    assert len(rec["figures"]) >= 7
    for f in rec["figures"]:
        panels = [a for a in f["axes"] if "colorbar" not in a]
        assert panels, f["name"]
        for a in panels:
            assert a["x"] and a["y"], (f["name"], a)
        for a in f["axes"]:
            if "colorbar" in a:
                assert a["colorbar"], f["name"]
        if f["kind"] in ("scatter", "histogram", "kde", "tsne", "decision"):
            assert any(a.get("legend") for a in panels), f["name"]
    kinds = {f["kind"]: f for f in rec["figures"]}
    assert any(
        "colorbar" in a and a["colorbar"] == "weight value" for a in kinds["heatmap"]["axes"]
    )
    assert {"class 0", "class 1", "class 2"} <= set(kinds["decision"]["axes"][0]["legend"])
    assert "PC 1" in kinds["decision"]["axes"][0]["x"]
    assert "weight value" in kinds["kde"]["axes"][0]["x"]
    assert "(fraction correct)" in kinds["scatter"]["axes"][0]["y"]


def test_cites_no_file_that_is_not_in_the_repository(built):
    _, _, rep, out = built
    text = re.sub(r"<[^>]+>", " ", Path(rep["html"]).read_text())
    text += Path(rep["summary"]).read_text()
    root = Path(__file__).resolve().parent.parent
    cited = set(re.findall(r"[\w./-]+\.(?:md|py|toml|txt|rst)\b", text))
    for name in cited:
        assert (root / name).exists() or (out / name).exists(), name
    assert "METHODS.md" not in text and "Zeng et al. (2025)" in text
