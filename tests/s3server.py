"""A local S3 emulator for the object-store tests: ``moto``'s server on 127.0.0.1, a free port,
started once per test session and stopped at its end; one fresh bucket per test.

:func:`start` raises :class:`Unavailable` with the reason when moto or s3fs is missing or the
server does not come up, and the tests are then skipped with that reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tests.services import Unavailable, free_port


class Server:
    """A running emulator; :attr:`env` are the variables boto/s3fs need to reach it."""

    def __init__(self) -> None:
        for mod, extra in (("moto", "moto[server]"), ("s3fs", "s3fs")):
            try:
                __import__(mod)
            except ImportError:
                raise Unavailable(f"{mod} is not installed (pip install '{extra}')") from None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise Unavailable("the moto server exited at start-up") from None
                time.sleep(0.1)
        else:
            self.stop()
            raise Unavailable("the moto server did not listen within 30 s")
        self.env = {
            "AWS_ACCESS_KEY_ID": "wdb-test",
            "AWS_SECRET_ACCESS_KEY": "wdb-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
        }

    def bucket(self, name: str) -> str:
        """Create bucket ``name``; returns its ``s3://`` URL."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
        )
        fs.mkdir(name)
        return f"s3://{name}"

    def keys(self, url: str) -> list[str]:
        """Every object under ``url`` (fresh listing, no cache)."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            skip_instance_cache=True,
        )
        fs.invalidate_cache()
        return fs.find(url.removeprefix("s3://"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start() -> Server:
    if os.environ.get("WDB_TEST_NO_S3"):
        raise Unavailable("WDB_TEST_NO_S3 is set")
    return Server()
