"""The house keeps its plan: plugins import only the public surface; files in wdb/ stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: code that plugs into wdb exactly as a user's plugin does
PLUGIN_CODE = ["ingest", "generators", "analyses", "tests/outside_study"]


def _wdb_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "wdb":
            names = [a.name for a in node.names]
            if node.module != "wdb" or any(n not in ("plugin", "open") for n in names):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("wdb.")]
    return [(n, m) for n, m in out if m not in ("wdb.plugin",)]


@pytest.mark.parametrize("folder", PLUGIN_CODE)
def test_plugins_import_only_the_public_surface(folder):
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in sorted((ROOT / folder).rglob("*.py"))
        for line, mod in _wdb_imports(p)
    ]
    assert not bad, "use wdb.plugin instead:\n" + "\n".join(bad)


def test_public_surface_resolves_every_name():
    import wdb.plugin

    for name in wdb.plugin.__all__:
        assert getattr(wdb.plugin, name) is not None, name
    with pytest.raises(AttributeError):
        wdb.plugin.no_such_name  # noqa: B018


def test_no_module_in_wdb_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "wdb").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"split these along their jobs: {long}"
