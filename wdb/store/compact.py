"""``wdb compact``: re-encode arrays written with an older codec into the store's codec now.

Databases made before ``wdb.rowdelta`` keep working as they are (zarr records each array's
codecs, and the old Blosc arrays read as before); compacting only saves bytes. Per array:

1. copy it, block by block, into ``<array>.compact-new`` with the same shape, chunks, dtype,
   fill value and attributes and the current codec;
2. read the copy back and compare it bit for bit with the source (a weight row's sha256 is of
   its bytes, so equal bytes are equal hashes; ``wdb fsck`` checks them again afterwards);
3. mark the copy verified (an attribute, written last);
4. swap: delete the old array, move the copy into its place (a rename on local disks, a copy
   on object stores), then delete the copy's metadata first and the rest of it after.

A crash at any point leaves either the old array with an unverified copy next to it (deleted
on the next run) or a verified copy, from which the next ``wdb compact`` redoes step 4: no state
loses bytes. The whole command holds the write lock, so writers wait; a reader that opens an
array in the instant of step 4 may fail and can simply be rerun. ``wdb fsck`` names leftovers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wdb.store.arrays import ArrayStore, _compressor

NEW = ".compact-new"
VERIFIED = "wdb_compact_verified"
BLOCK_BYTES = 64 << 20


@dataclass
class CompactReport:
    """What ``compact`` did (or, with ``dry_run``, would do), one entry per array."""

    arrays: list[dict] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return sum(a["bytes_before"] for a in self.arrays)

    @property
    def bytes_after(self) -> int:
        return sum(a["bytes_after"] or 0 for a in self.arrays)


def _codec_name(arr: Any) -> str:
    comps = arr.compressors
    if not comps:
        return "none"
    version = getattr(comps[0], "format", None)  # wdb.rowdelta: which chunk format
    return type(comps[0]).__name__ + (f" (format {version})" if version else "")


def is_current(arr: Any) -> bool:
    """Whether the array already uses the codec new arrays get."""
    comps = arr.compressors
    return bool(comps) and comps[0] == _compressor(arr.dtype)


def _arrays(store: ArrayStore) -> Iterator[tuple[str, Any]]:
    for name, node in store.group.members(max_depth=None):
        if hasattr(node, "shape") and not name.endswith(NEW):
            yield name, node


def leftovers(store: ArrayStore) -> list[str]:
    """Copies an interrupted compact left behind (``wdb compact`` finishes or removes them)."""
    fs, root = _fs(store)
    if not fs.exists(root):
        return []
    return [name for name, _ in store.group.members(max_depth=None) if name.endswith(NEW)]


def _fs(store: ArrayStore, path: str = "") -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(store.root)
    return fs, f"{root.rstrip('/')}/{path}".rstrip("/")


def _swap(store: ArrayStore, path: str) -> None:
    """Step 4: replace ``path`` by its verified copy (redone in full after a crash)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, target = _fs(store, path)
    _, copy = _fs(store, path + NEW)
    if fs.exists(target):
        fs.rm(target, recursive=True)
    if isinstance(fs, LocalFileSystem):
        fs.mv(copy, target, recursive=True)  # a rename
    else:
        fs.copy(copy, target, recursive=True)
        fs.rm(f"{copy}/zarr.json")  # unverify the copy before removing the rest
        fs.rm(copy, recursive=True)
    store.reopen()


def _recover(store: ArrayStore, report: CompactReport) -> None:
    for name in leftovers(store):
        path = name[: -len(NEW)]
        if store.array(name).attrs.get(VERIFIED):
            _swap(store, path)
            report.recovered.append(f"{path}: finished the swap an interrupted compact began")
        else:
            fs, copy = _fs(store, name)
            fs.rm(copy, recursive=True)
            store.reopen()
            report.recovered.append(f"{path}: removed an unverified copy")


def _copy_verified(store: ArrayStore, path: str, src: Any) -> None:
    """Steps 1-3 for one array."""
    group = store.group
    dst = group.create_array(
        path + NEW,
        shape=src.shape,
        chunks=src.chunks,
        dtype=src.dtype,
        compressors=_compressor(src.dtype),
        fill_value=src.fill_value,
        overwrite=True,
    )
    dst.attrs.update(dict(src.attrs))
    row_bytes = max(1, int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize)
    step = max(1, BLOCK_BYTES // row_bytes // src.chunks[0]) * src.chunks[0]
    from wdb.progress import progress

    bar = progress(total=int(src.shape[0]), desc=f"compact {path}")
    for start in range(0, src.shape[0], step):
        block = src[start : start + step]
        dst[start : start + step] = block
        back = dst[start : start + step]
        if back.tobytes() != block.tobytes():
            raise RuntimeError(f"{path}: rows {start}.. differ after re-encoding; nothing changed")
        bar.update(block.shape[0])
    bar.close()
    dst.attrs[VERIFIED] = True


def compact(db: Any, dry_run: bool = False) -> CompactReport:
    """Re-encode every array of ``db``'s weight and output stores not in the current codec."""
    report = CompactReport()
    with db.write_lock():
        for store in (db.weights_store, db.outputs_store):
            fs, root = _fs(store)
            if not fs.exists(root):
                continue
            if not dry_run:
                _recover(store, report)
            for path, arr in list(_arrays(store)):
                if is_current(arr):
                    continue
                entry = {
                    "array": f"{store.root.rsplit('/', 1)[-1]}/{path}",
                    "rows": int(arr.shape[0]),
                    "codec_before": _codec_name(arr),
                    "bytes_before": int(arr.nbytes_stored()),
                    "bytes_after": None,
                }
                if not dry_run:
                    _copy_verified(store, path, arr)
                    _swap(store, path)
                    entry["bytes_after"] = int(store.array(path).nbytes_stored())
                report.arrays.append(entry)
    return report
