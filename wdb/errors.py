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
