"""A store written by an earlier wdb keeps opening and reading bit-exactly.

``tests/data/store_f3bd864/store.tar.gz`` was written by wdb at commit f3bd864 (before the
package layout moved and before any format change of this line of work) from the files made by
``make_zoo.py`` beside it, which the archive also holds as ``zoo/``. Every later format change
must keep this test passing (an upgrade in ``wdb init``/open, or a reader for the old format).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from wdb.cli.main import cli

FIXTURE = Path(__file__).parent / "data" / "store_f3bd864" / "store.tar.gz"


@pytest.fixture
def old_store(tmp_path, monkeypatch):
    # the fixture's catalog is the DuckDB file inside it, whatever catalog the suite runs on
    monkeypatch.delenv("WDB_CATALOG_URL", raising=False)
    monkeypatch.delenv("WDB_STORE_URL", raising=False)
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path


def _wdb(store: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--db", str(store), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k].view(torch.uint8), v.contiguous().view(torch.uint8)), k


def test_old_store_opens_verifies_and_exports_bit_exactly(old_store):
    store = old_store / "store"
    _wdb(store, "fsck")
    for step in range(3):
        out = old_store / f"a{step}.safetensors"
        _wdb(
            store,
            "export",
            "run_a",
            "--step",
            str(step),
            "--format",
            "safetensors",
            "--out",
            str(out),
        )
        want = torch.load(old_store / f"zoo/run_a/epoch_{step}.pt", weights_only=True)
        _same(load_file(out), want)
    out = old_store / "b.safetensors"
    _wdb(store, "export", "run_b", "--step", "7", "--format", "safetensors", "--out", str(out))
    _same(load_file(out), load_file(old_store / "zoo/run_b/step_7.safetensors"))
