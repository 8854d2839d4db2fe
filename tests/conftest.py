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


#: ``WDB_TEST_CATALOG=postgresql`` runs the tests against a throwaway PostgreSQL server (one fresh
#: database per test, through ``WDB_CATALOG_URL``, which the CLI's subprocesses inherit).
ON_POSTGRES = os.environ.get("WDB_TEST_CATALOG") == "postgresql"


def _start(module: str, what: str):
    """Start the throwaway service ``tests/<module>.py``, or skip the test saying why not."""
    import importlib

    from tests.services import Unavailable

    try:
        return importlib.import_module(f"tests.{module}").start()
    except Unavailable as exc:
        pytest.skip(f"{what}: {exc}")


@pytest.fixture(scope="session")
def pg_server():
    server = _start("pgserver", "PostgreSQL half skipped")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _catalog(request, monkeypatch):
    if not ON_POSTGRES:
        yield
        return
    server = request.getfixturevalue("pg_server")
    name = "t_" + os.urandom(6).hex()
    monkeypatch.setenv("WDB_CATALOG_URL", server.create(name))
    yield
    server.drop(name)


@pytest.fixture(scope="module")
def module_catalog(request):
    """A catalog URL for a module-scoped fixture's database (``None``: a DuckDB file beside
    it). Module fixtures run before the per-test ``_catalog``, so on PostgreSQL they need a
    server database of their own, dropped when the module ends."""
    if not ON_POSTGRES:
        yield None
        return
    server = request.getfixturevalue("pg_server")
    name = "m_" + os.urandom(6).hex()
    yield server.create(name)
    server.drop(name)


@pytest.fixture(scope="session")
def s3_server():
    server = _start("s3server", "S3 emulator unavailable")
    yield server
    server.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch):
    """A fresh bucket on the emulator as this test's weight store (``WDB_STORE_URL``); the
    subprocesses a test starts inherit it."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    url = s3_server.bucket("wdb-" + os.urandom(4).hex()) + "/db"
    monkeypatch.setenv("WDB_STORE_URL", url)
    return url
