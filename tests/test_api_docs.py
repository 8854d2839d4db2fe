"""docs/api.md's example runs as written: its ```python blocks are executed in order."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_api_page_has_a_python_example():
    blocks = python_blocks(DOC.read_text())
    assert blocks and "wdb.open" in "".join(blocks)


def test_api_page_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scope: dict = {"__name__": "api_md"}
    for i, block in enumerate(python_blocks(DOC.read_text())):
        exec(compile(block, f"{DOC}:block{i + 1}", "exec"), scope)
    out = capsys.readouterr().out
    assert "mlp-lr0.05" in out and "metrics.loss" in out
