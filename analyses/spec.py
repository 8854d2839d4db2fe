"""Analysis specs: small TOML files that say *what* to compute, never *how*.

A spec names

- ``[selections]``: SQL filters over ``checkpoint_info`` (``training``, ``generated``, one per
  baseline), materialised as one table ``a_<spec>_<method>_selections(selection, checkpoint_id)``;
- ``[[relations]]``: derived data computed by engines — ``novelty`` and ``nearest`` through wdb's
  query engines, ``chamfer`` (shape distances), and figure data that needs bytes from the stores:
  ``values`` (weights at random indices), ``decision`` (a classifier's decision regions on a PCA
  grid), ``points`` (stored surface points), ``tsne`` (2-D embedding of weights);
- ``[[tables]]``: plain SQL over the selections, relations and earlier tables;
- ``[[figures]]``: a figure kind drawn from one table.

Every relation and table is materialised as ``a_<spec>_<method>_<name>`` in the catalog, so a
user can query exactly the numbers behind every figure. Placeholders ``{name}`` in SQL resolve to
those table names, and to the context the engine fills in for ``--method M``: ``{gen}`` (M's
latest finished generator run with samples, baselines included), ``{gen_kind}`` (its samples'
kind: ``generated``, or ``baseline`` for a noise / average / gaussian run), ``{train_ids}`` (a subquery of the ids it trained on),
``{space_id}``, ``{zoo}``, ``{noise_1}``, ``{noise_2}`` (the noise baselines of the same space,
smaller σ first), ``{average}``, ``{gaussian}``, ``{method}``. Unknown placeholders are left alone.

``reference = "<selection>"`` names the selection that stands for the generator run's reference
set: when the run recorded one (``reference_sets``, wdb schema 0009), that set replaces the
selection's SQL, which stays the fallback for runs recorded before (a context note says which).

``[method.<name>]`` overlays change a spec for one method (e.g. Hyper-Representations' "training"
models are the autoencoder's reconstructions; G.pt uses permutation-aligned L2). Entries may carry
``when = "classifier" | "field"`` (the task kind) and ``methods = [...]`` to apply selectively.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdb.plugin import BadInput, NotFound

BUILTIN_DIR = Path(__file__).parent
RELATION_KINDS = ("novelty", "nearest", "chamfer", "values", "decision", "points", "tsne")
FIGURE_KINDS = ("heatmap", "histogram", "decision", "shapes", "scatter", "kde", "tsne", "bars")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Spec:
    """A parsed analysis spec (after any ``[method.<m>]`` overlay has been applied)."""

    name: str
    title: str
    description: str
    selections: dict[str, str]
    relations: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    figures: list[dict[str, Any]]
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the selection that stands for the generator run's reference set: replaced by the set the
    #: run recorded (``reference_sets``) when it recorded one; its SQL is the fallback for older runs
    reference: str | None = None

    def for_method(self, method: str | None) -> Spec:
        """This spec with the ``[method.<method>]`` overlay applied."""
        return parse(self.raw, self.path, method)


def builtin() -> dict[str, Path]:
    """Built-in specs shipped in ``analyses/`` (name → path)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def load(name_or_path: str | Path, method: str | None = None) -> Spec:
    """A spec by built-in name (``memorization``) or TOML path."""
    path = Path(name_or_path)
    if not path.suffix and str(name_or_path) in builtin():
        path = builtin()[str(name_or_path)]
    if not path.exists():
        known = ", ".join(builtin()) or "none"
        raise NotFound(f"analysis spec '{name_or_path}' not found (built-in: {known})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: invalid TOML: {exc}") from None
    return parse(raw, path, method)


def _merge_named(base: list[dict], over: dict[str, dict]) -> list[dict]:
    out = copy.deepcopy(base)
    for item in out:
        if item.get("name") in over:
            item.update(over[item["name"]])
    return out


def parse(raw: dict[str, Any], path: Path | None = None, method: str | None = None) -> Spec:
    """Validate a spec dict; apply the overlay for ``method``."""
    where = str(path) if path else "spec"
    name = raw.get("name") or (path.stem if path else None)
    if not name or not _NAME.match(str(name)):
        raise BadInput(f"{where}: 'name' must be lowercase letters, digits and _ (got {name!r})")
    selections = dict(raw.get("selections", {}))
    relations = list(raw.get("relations", []))
    tables = list(raw.get("tables", []))
    figures = list(raw.get("figures", []))
    overlay = raw.get("method", {}).get(method or "", {})
    if overlay:
        selections.update(overlay.get("selections", {}))
        relations = _merge_named(relations, overlay.get("relations", {}))
        tables = _merge_named(tables, overlay.get("tables", {}))
        figures = _merge_named(figures, overlay.get("figures", {}))
    for sel, sql in selections.items():
        if not _NAME.match(sel) or not isinstance(sql, str):
            raise BadInput(f"{where}: selection '{sel}' must be a name = \"SQL filter\"")
    seen: set[str] = set(["selections"])
    for group, kinds in (("relations", RELATION_KINDS), ("tables", None)):
        for item in relations if group == "relations" else tables:
            n = item.get("name")
            if not n or not _NAME.match(n):
                raise BadInput(f"{where}: every entry of [[{group}]] needs a lowercase 'name'")
            if n in seen:
                raise BadInput(f"{where}: name '{n}' is used twice")
            seen.add(n)
            if kinds and item.get("kind") not in kinds:
                raise BadInput(
                    f"{where}: relation '{n}' has kind {item.get('kind')!r}; "
                    f"expected one of {', '.join(kinds)}"
                )
            if group == "tables" and not item.get("sql"):
                raise BadInput(f"{where}: table '{n}' needs 'sql'")
    reference = raw.get("reference")
    if reference is not None and reference not in selections:
        raise BadInput(f"{where}: 'reference' names no selection ({reference!r})")
    for fig in figures:
        if fig.get("kind") not in FIGURE_KINDS:
            raise BadInput(
                f"{where}: figure {fig.get('name')!r} has kind {fig.get('kind')!r}; "
                f"expected one of {', '.join(FIGURE_KINDS)}"
            )
        if fig.get("table") not in seen:
            raise BadInput(
                f"{where}: figure {fig.get('name')!r} draws unknown table {fig.get('table')!r}"
            )
    return Spec(
        name=str(name),
        title=str(raw.get("title", name)),
        description=str(raw.get("description", "")).strip(),
        selections=selections,
        relations=relations,
        tables=tables,
        figures=figures,
        path=path,
        raw=raw,
        reference=reference,
    )


def applies(item: dict[str, Any], method: str | None, task_kind: str | None) -> bool:
    """Whether a relation/table/figure applies to this method and task kind."""
    return why_not(item, method, task_kind) is None


def why_not(item: dict[str, Any], method: str | None, task_kind: str | None) -> str | None:
    """Why an item does not apply (None when it does): the reason a report lists it under."""
    methods = item.get("methods")
    if methods and method not in methods:
        return f"only for {', '.join(methods)}"
    when = item.get("when")
    if when and when != task_kind:
        if task_kind is None:
            return (
                f"needs a {when} task, and no task knows this weight space (evaluate it with "
                "`wdb evaluate --task NAME|FILE.py`)"
            )
        return f"only for {when} tasks (this one is a {task_kind})"
    return None


_PH = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def fill(sql: str, values: dict[str, Any]) -> str:
    """Replace ``{name}`` placeholders that ``values`` knows; leave others untouched."""
    return _PH.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), sql)
