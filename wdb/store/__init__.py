"""The bytes: the row codec, Zarr arrays of rows, the one write protocol, compact, fsck, export.

Nothing here knows about tasks, generators or queries; everything above reads and writes rows
through these modules.
"""
