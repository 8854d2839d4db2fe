"""Figures of the memorization analyses, each drawn from the rows of ONE catalog table.

Every function takes the table's rows (list of dicts), the PNG path, a title and the analysis
context (for labels such as the noise σ), and draws nothing it cannot read from those rows — so
what a figure shows is exactly what ``SELECT * FROM <its table>`` returns. Matplotlib's Agg backend
(no display), 120 dpi PNGs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

COLORS = {
    "training": "#1f77b4",
    "generated": "#d62728",
    "noise_1": "#2ca02c",
    "noise_2": "#8c564b",
    "average": "#9467bd",
    "gaussian": "#ff7f0e",
    "reconstructed": "#1f77b4",
    "test": "#7f7f7f",
}
ORDER = ["training", "generated", "noise_1", "noise_2", "average", "gaussian", "test"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(group: str, context: dict | None = None) -> str:
    """Human label of a selection (noise baselines carry their σ; a baseline analysed in place
    of a generator is named as one)."""
    context = context or {}
    sig = (context.get("sigmas") or {}).get(group)
    if group == "generated" and context.get("baseline"):
        what = f"{context.get('method')} σ={sig:g}" if sig is not None and sig == sig else None
        return f"{what or context.get('method')} samples (baseline)"
    if group.startswith("noise"):
        return f"noise σ={sig:g}" if sig is not None and sig == sig else group.replace("_", " ")
    if group == "training" and context.get("method") == "hyperrep":
        return "training (reconstructed)"
    return {"average": "averaged"}.get(group, group)


def _groups(rows: list[dict], key: str = "selection") -> list[str]:
    present = {r[key] for r in rows}
    return [g for g in ORDER if g in present] + sorted(present - set(ORDER))


#: png path → the labels of its axes (``axes_labels``), filled by ``_save`` for the caller's
#: record; the report writes them into each image's alt text
LABELS: dict[str, list[dict[str, Any]]] = {}


def axes_labels(fig) -> list[dict[str, Any]]:
    """Per drawn panel: title, x / y (/ z) labels (the figure's shared labels where a panel has
    none), legend entries; colour bars as their own entry with their label."""
    sup = {
        k: (getattr(fig, f"_sup{k}label", None) or None)
        and getattr(fig, f"_sup{k}label").get_text()
        for k in ("x", "y")
    }
    legends = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    out = []
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None or ax.get_label() == "<colorbar>":
            lab = ax.get_ylabel() or ax.get_xlabel()
            out.append({"colorbar": lab})
            continue
        if not ax.get_visible() or not ax.axison:
            continue
        d: dict[str, Any] = {
            "title": ax.get_title() or ax.get_title(loc="left"),
            "x": ax.get_xlabel() or sup["x"] or "",
            "y": ax.get_ylabel() or sup["y"] or "",
        }
        if hasattr(ax, "get_zlabel"):
            d["z"] = ax.get_zlabel()
        leg = ax.get_legend()
        d["legend"] = [t.get_text() for t in leg.get_texts()] if leg else legends
        out.append(d)
    return out


def _save(fig, path: Path, note: str = "") -> Path:
    """Write the PNG; ``note`` (why a group is missing, what to run) goes under the plot."""
    import textwrap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if note:
        width = int(fig.get_figwidth() * 15)
        fig.text(
            0.0,
            -0.02,
            "\n".join(textwrap.wrap(note, width)),
            ha="left",
            va="top",
            fontsize=7,
            color="#9a6700",
        )
    LABELS[str(path)] = axes_labels(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def heatmap(rows: list[dict], path: Path, title: str = "", context: dict | None = None, **_: Any):
    """One panel per generated model: its row on top (red outline), its 3 nearest training models
    below (white separators), at the same random parameter indices; one colour scale per panel."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    by_q: dict[int, dict[int, list]] = defaultdict(dict)
    idx_of: dict[int, list] = {}
    for r in rows:
        by_q[r["query"]].setdefault(r["rank"], []).append((r["param_index"], r["value"]))
    queries = sorted(by_q)
    fig, axes = plt.subplots(
        len(queries), 1, figsize=(9, 1.35 * len(queries) + 0.9), squeeze=False, layout="constrained"
    )
    for ax, q in zip(axes[:, 0], queries, strict=True):
        ranks = sorted(by_q[q])
        mat = []
        for k in ranks:
            vals = sorted(by_q[q][k])
            idx_of[q] = [i for i, _ in vals]
            mat.append([v for _, v in vals])
        M = np.array(mat, dtype=float)
        lim = np.nanmax(np.abs(M)) or 1.0
        im = ax.imshow(M, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="none")
        for y in range(1, len(ranks)):
            ax.axhline(y - 0.5, color="white", lw=2)
        ax.add_patch(
            Rectangle(
                (-0.5, -0.5), M.shape[1], 1, fill=False, edgecolor="red", lw=2.5, clip_on=False
            )
        )
        ax.set_yticks(range(len(ranks)))
        ax.set_yticklabels(["generated" if k == 0 else f"NN {k}" for k in ranks], fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"generated checkpoint {q}", fontsize=8, loc="left")
        cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, aspect=8)
        cb.set_label("weight value", fontsize=7)
        cb.ax.tick_params(labelsize=7)
    fig.supxlabel(f"parameter ({M.shape[1]} random indices, the same in every row)", fontsize=9)
    fig.supylabel("model: generated (red box), then nearest training NN 1–3", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def histogram(
    rows: list[dict],
    path: Path,
    title: str = "",
    context: dict | None = None,
    note: str = "",
    **_: Any,
):
    """% of models per bin of min-L2 to training, training (self excluded) vs generated."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = _groups(rows)
    for g in groups:
        rs = sorted((r for r in rows if r["selection"] == g), key=lambda r: r["bin"])
        lo = np.array([r["bin_lo"] for r in rs], float)
        hi = np.array([r["bin_hi"] for r in rs], float)
        w = hi - lo
        if not np.isfinite(w).all() or (w <= 0).all():
            w = np.full_like(lo, 1.0)
        ax.bar(
            lo,
            [r["pct"] for r in rs],
            width=w,
            align="edge",
            alpha=0.55,
            color=COLORS.get(g),
            edgecolor="black",
            lw=0.4,
            label=f"{label(g, context)} → training (n={sum(r['n'] for r in rs)})",
        )
    metric = "aligned L2" if (context or {}).get("method") == "gpt" else "L2"
    ax.set_xlabel(f"{metric} distance to the nearest training model (weight units)")
    ax.set_ylabel("% of models")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path, note)


def decision(rows: list[dict], path: Path, title: str = "", context: dict | None = None, **_: Any):
    """Decision regions: each pair = generated model beside its nearest training model."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    cells: dict[tuple[int, str], dict] = {}
    for r in rows:
        c = cells.setdefault(
            (r["pair"], r["role"]), {"gx": [], "gy": [], "p": [], "id": r["checkpoint_id"]}
        )
        c["gx"].append(r["gx"])
        c["gy"].append(r["gy"])
        c["p"].append(r["pred"])
    pairs = sorted({p for p, _ in cells})
    roles = ["generated", "nearest training"]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(6.4, 3.1 * len(pairs)), squeeze=False)
    from matplotlib.patches import Patch

    cmap = ListedColormap(plt.get_cmap("tab10").colors)
    classes: set[int] = set()
    for i, p in enumerate(pairs):
        for j, role in enumerate(roles):
            ax = axes[i, j]
            c = cells.get((p, role))
            if c is None:
                ax.axis("off")
                continue
            gx, gy, pr = (np.asarray(c[k]) for k in ("gx", "gy", "p"))
            xs, ys = np.unique(gx), np.unique(gy)
            img = np.full((len(ys), len(xs)), -1.0)
            img[np.searchsorted(ys, gy), np.searchsorted(xs, gx)] = pr
            classes.update(int(v) for v in np.unique(pr))
            ax.imshow(
                img,
                origin="lower",
                cmap=cmap,
                vmin=-0.5,
                vmax=9.5,
                interpolation="nearest",
                extent=(xs[0], xs[-1], ys[0], ys[-1]),
                aspect="auto",
            )
            ax.set_title(
                f"pair {p}: {role} #{c['id']}",
                fontsize=8,
                color="#d62728" if role == "generated" else "black",
            )
            ax.tick_params(labelsize=6)
            ax.set_xlabel("PC 1 of the test inputs (std units)", fontsize=7)
            ax.set_ylabel("PC 2 (std units)", fontsize=7)
    handles = [Patch(color=cmap(k % 10), label=f"class {k}") for k in sorted(classes)]
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if len(pairs) < 3 else 0.03, 1, 1))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 10) or 1,
        fontsize=7,
        title="predicted class",
        title_fontsize=7,
        frameon=False,
    )
    return _save(fig, path)


def shapes(rows: list[dict], path: Path, title: str = "", context: dict | None = None, **_: Any):
    """Point renders: generated shape beside its nearest training shape (3-D scatter)."""
    plt = _plt()
    cells: dict[tuple[int, str], dict] = {}
    for r in rows:
        c = cells.setdefault((r["pair"], r["role"]), {"p": [], "id": r["checkpoint_id"]})
        c["p"].append((r["x"], r["y"], r["z"]))
    pairs = sorted({p for p, _ in cells})
    fig = plt.figure(figsize=(6.4, 2.7 * len(pairs)))
    for i, p in enumerate(pairs):
        for j, role in enumerate(["generated", "nearest training"]):
            ax = fig.add_subplot(len(pairs), 2, 2 * i + j + 1, projection="3d")
            c = cells.get((p, role))
            if c is None:
                ax.set_axis_off()
                continue
            P = np.asarray(c["p"], float)
            # occupancy fields are y-up; matplotlib is z-up
            ax.scatter(P[:, 0], P[:, 2], P[:, 1], s=1.5, c=P[:, 1], cmap="viridis", depthshade=True)
            lim = np.abs(P).max() or 1.0
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_zlim(-lim, lim)
            ax.view_init(elev=25, azim=-60)
            ax.set_box_aspect((1, 1, 1), zoom=1.1)
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.set_zticklabels([])
            ax.set_xlabel("x", fontsize=7, labelpad=-12)
            ax.set_ylabel("z", fontsize=7, labelpad=-12)
            ax.set_zlabel("y (up)", fontsize=7, labelpad=-12)
            ax.set_title(
                f"{role} #{c['id']}",
                fontsize=8,
                color="#d62728" if role == "generated" else "black",
            )
    fig.suptitle(title + "\n(surface points, shape units; colour = height)", fontsize=10)
    fig.subplots_adjust(wspace=0.0, hspace=0.08, top=0.9)
    return _save(fig, path)


def scatter(
    rows: list[dict],
    path: Path,
    title: str = "",
    context: dict | None = None,
    x: str = "max_iou",
    y: str = "accuracy",
    xlabel: str | None = None,
    ylabel: str | None = None,
    note: str = "",
    **_: Any,
):
    """One point per model, coloured by group (accuracy vs novelty, or shape distances)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for g in _groups(rows):
        xs = [r[x] for r in rows if r["selection"] == g]
        ys = [r[y] for r in rows if r["selection"] == g]
        ax.scatter(
            xs,
            ys,
            s=14,
            alpha=0.7,
            color=COLORS.get(g),
            edgecolor="none",
            label=f"{label(g, context)} ({len(xs)})",
        )
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.legend(fontsize=8, markerscale=1.5)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _save(fig, path, note)


def kde(
    rows: list[dict],
    path: Path,
    title: str = "",
    context: dict | None = None,
    note: str = "",
    **_: Any,
):
    """Per parameter index: density of its values over training vs generated models."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    from scipy.stats import gaussian_kde

    idx = sorted({r["param_index"] for r in rows})
    fig, axes = plt.subplots(
        1, len(idx), figsize=(2.6 * len(idx), 2.8), squeeze=False, layout="constrained"
    )
    for ax, i in zip(axes[0], idx, strict=True):
        vals = {
            g: np.array([r["value"] for r in rows if r["param_index"] == i and r["selection"] == g])
            for g in _groups(rows)
        }
        allv = np.concatenate([v for v in vals.values() if len(v)])
        span = allv.max() - allv.min() or 1e-3
        grid = np.linspace(allv.min() - 0.2 * span, allv.max() + 0.2 * span, 200)
        for g, v in vals.items():
            if len(v) > 1 and np.ptp(v) > 0:
                ax.plot(grid, gaussian_kde(v)(grid), color=COLORS.get(g), label=label(g, context))
                ax.fill_between(grid, gaussian_kde(v)(grid), color=COLORS.get(g), alpha=0.15)
            elif len(v):
                ax.axvline(v[0], color=COLORS.get(g), label=label(g, context))
        ax.set_title(f"parameter {i}", fontsize=8)
        ax.set_yticks([])
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("weight value at that parameter index", fontsize=8)
    fig.supylabel("density (KDE)", fontsize=8)
    fig.legend(handles, labels, loc="outside upper right", fontsize=7, ncol=len(labels))
    return _save(fig, path, note)


def tsne(
    rows: list[dict],
    path: Path,
    title: str = "",
    context: dict | None = None,
    note: str = "",
    **_: Any,
):
    """2-D t-SNE of weights, coloured by group."""
    return scatter(
        rows,
        path,
        title,
        context,
        x="x",
        y="y",
        xlabel="t-SNE 1 (arbitrary units)",
        ylabel="t-SNE 2 (arbitrary units)",
        note=note,
    )


def bars(
    rows: list[dict],
    path: Path,
    title: str = "",
    context: dict | None = None,
    x: str = "variant",
    y: str = "value",
    hue: str | None = None,
    ylabel: str | None = None,
    xlabel: str | None = None,
    **_: Any,
):
    """Grouped bars (experiments: per variant or per transform)."""
    plt = _plt()
    cats = list(dict.fromkeys(r[x] for r in rows))
    hues = list(dict.fromkeys(r[hue] for r in rows)) if hue else [None]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(cats) * max(1, len(hues))), 3.6))
    w = 0.8 / len(hues)
    for k, h in enumerate(hues):
        vals = [
            next((r[y] for r in rows if r[x] == c and (h is None or r[hue] == h)), np.nan)
            for c in cats
        ]
        ax.bar(np.arange(len(cats)) + k * w, vals, width=w, label=str(h) if h else None)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - w / 2)
    ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel or y)
    ax.set_xlabel(xlabel or x)
    if hue:
        ax.legend(fontsize=8, title=hue, title_fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
