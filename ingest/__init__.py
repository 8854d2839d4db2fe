"""Readers that turn checkpoint folders in the wild into wdb rows.

Each module is a ``wdb.ingest.readers.Reader`` (``detect(path) -> bool``, ``scan(path, options) ->
Iterable[Found]``, ``PRIORITY``), registered as a ``wdb.readers`` entry point in wdb's
``pyproject.toml`` exactly as a user's reader would be; ``wdb.ingest.pipeline`` does loading,
validation and writing.
"""
