"""Shared fixtures. Every test makes its own small data under tmp_path."""

from __future__ import annotations

import os

import pytest

# Tests run on 2 shared cores: one thread per process keeps torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WDB_PROGRESS", "0")


@pytest.fixture
def db(tmp_path):
    """A fresh, empty wdb database directory."""
    import wdb

    return wdb.open(tmp_path / "db")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
