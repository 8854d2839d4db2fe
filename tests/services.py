"""What the throwaway test services (``pgserver``, ``s3server``) share."""

from __future__ import annotations

import socket


class Unavailable(RuntimeError):
    """The service cannot run here; the message says why (the tests then skip, saying it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
