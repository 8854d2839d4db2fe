"""Readers that turn checkpoint folders in the wild into wdb rows.

Each module exposes ``detect(path) -> bool`` and ``scan(path, options) -> Iterable[Found]``; the
engine in ``wdb.importer`` (registry ``READERS``) does loading, validation and writing.
"""
