"""User-facing errors: each prints as one line (naming the file or object and the problem) and
makes the CLI exit non-zero, never with a traceback."""

from __future__ import annotations


class WdbError(Exception):
    """An error the user can act on; its message is one complete line."""

    exit_code = 1


class NotFound(WdbError):
    """A named run, checkpoint, space, task or method does not exist."""


class SchemaError(WdbError):
    """The catalog's schema cannot be used by this version of wdb."""


class CatalogLocked(WdbError):
    """Another process holds the DuckDB catalog open for writing."""


class BadInput(WdbError):
    """A file, layout or value that wdb refuses to store."""


class DamagedChunk(WdbError):
    """Stored bytes of one or more checkpoints are missing or do not match the catalog's hash.

    ``checkpoint_ids`` lists every damaged checkpoint the failed read met (``--skip-damaged``
    leaves them out and tries again); the message names the first one."""

    exit_code = 3

    def __init__(self, message: str, checkpoint_ids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.checkpoint_ids = tuple(checkpoint_ids)
