"""A throwaway PostgreSQL server on 127.0.0.1 for the tests (``WDB_TEST_CATALOG=postgresql``).

``initdb`` into a temporary folder, ``pg_ctl start`` on a free port with trust authentication,
one fresh database per test, everything stopped and removed at the end. The binaries come from
``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``). :func:`start` raises :class:`Unavailable` with the reason when any of this is
impossible, and the tests are then skipped with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.services import Unavailable, free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    raise Unavailable(f"'{name}' not found (apt-get install postgresql)")


class Server:
    """A running server; ``url(name)`` is a SQLAlchemy URL of database ``name`` on it."""

    def __init__(self) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install -e '.[postgres]')") from None
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="wdb-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                runuser = None
            if not runuser:
                raise Unavailable("running as root without a 'postgres' user and runuser")
            self.prefix = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self._run(
            [self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        opts += " -c max_connections=200"
        self._run(
            [
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-o",
                opts,
                "-w",
                "start",
            ]
        )

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(
            [*self.prefix, *cmd], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"]
            raise Unavailable(f"{Path(cmd[0]).name} failed: {tail[0]}")

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as con:
            con.execute(sql)

    def create(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        with contextlib.suppress(Unavailable):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> Server:
    return Server()
