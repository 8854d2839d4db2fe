"""The ingest engine: turn a folder of checkpoints from the wild into wdb rows, safely.

Readers (``ingest/<name>.py``) only *find* checkpoints: each yields ``Found`` records (file, run,
step, a ``load`` callable, metrics, ...). This module does everything else, the same way for every
format: load safely, validate, group by layout, write in batches through ``Database.write_checkpoints``
(bytes first, then one catalog transaction per batch), and report.

Decisions (the spec is silent on these):

- **Format detection.** Readers are plugins (group ``wdb.readers``, see ``wdb.plugins`` and
  :class:`Reader`): every registered reader is asked in ``PRIORITY`` order (built-ins: modelzoo,
  flat, pdiff at 10-30; the generic folder reader last at 90); the first whose ``detect`` says yes
  wins; ``format=`` (a name or a ``.py`` file) overrides.
- **Safe loading.** torch files are read by a restricted C unpickler (the Python docs'
  "restricting globals" recipe) that knows only the globals a tensor state dict needs
  (``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``torch.*Storage``, ``OrderedDict``), over a
  small zip reader that takes the (uncompressed, CRC-checked) members as zero-copy views: several
  times faster than ``torch.load`` on small files and no torch import. Anything unusual it
  declines (it never decides "malicious") and ``torch.load(..., weights_only=True, mmap=True)``
  gives the verdict. No code from a pickle can run on either path. safetensors via
  ``safetensors.torch.load_file``; ``.npz`` with ``allow_pickle=False``.
- **Validation.** Containers (:data:`CONTAINER_KEYS`: Lightning's ``state_dict``,
  ``model_state_dict``, ``model``, DeepSpeed's ``module``, ``ema``, ...) are unwrapped; floats
  must be finite; integer buffers must fit the storage dtype exactly. A ``*.index.json`` with
  its shards is one checkpoint (:func:`read_sharded`).
- **One space per architecture.** Every distinct layout gets its own space (a folder of
  ``alex.pth``, ``squeeze.pth``, ``vgg.pth`` is three spaces). "Shape mismatch" is only for a
  file whose tensor names and dtypes agree with the other files *of its run* but whose shapes
  differ: ``shape mismatch: 'fc1.weight' is [10, 785], expected [10, 784]`` against the layout
  that run's files have (the first accepted one; a layout seen in two or more files is accepted
  at once, one seen in a single file waits in memory until the scan ends). With ``--space``
  naming an existing space, every file must have exactly that layout. Scan order is
  deterministic, so a rerun decides the same way.
- **Metadata and bundles.** Non-tensor entries (a ``step`` int, a ``note`` string, Lightning's
  ``epoch``) are kept as the checkpoint's ``meta`` JSON, never a reason to refuse the tensors; a
  bundle's step counter (``global_step``/``step``) is the step where the reader only guessed it
  from the file name; other top-level numbers become reported metrics. Optimizer, scheduler,
  RNG and training-argument files next to a checkpoint are *companions*: counted, not stored,
  not errors. Complex tensors are refused (one line).
- **Space names.** ``--space`` if given (an existing space: every file must fit it; a JSON
  layout file: the layout, named as below; another name: the name of the new space); else the zoo name for the first layout that this ingest
  creates and ``<zoo>-<n_params>p-<hash8>`` for further ones. A layout that already has a space keeps
  it (spaces are identified by layout hash).
- **Run names** are global in the catalog. A run that already exists in *another* zoo is not
  silently merged: its files are skipped with a reason (rename the runs or use ``--zoo``).
- **Strict mode** validates every file before committing anything: rows are kept in memory up to
  ``WDB_INGEST_BUFFER_MB`` (default 1024) and otherwise re-read at commit time, and all conflicts
  with the catalog are checked first. The first bad file raises ``BadInput``; nothing is written.
- **Kill safety** comes from ``write_checkpoints``: bytes are written before the catalog rows that point to
  them, an interrupted batch leaves only unreferenced tail rows that the next commit reuses, and
  a rerun skips the (run, space, step) already stored with the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wdb.errors import BadInput, WdbError
from wdb.store.spaces import Entry, Layout, storage_dtype_of
from wdb.store.tensors import FLOAT_DTYPES, state_to_numpy
from wdb.store.write import RowStream

READER_GROUP = "wdb.readers"
#: detection priority of a reader that declares none (lower is asked first).
DEFAULT_PRIORITY = 50

#: checkpoints per commit (one Zarr write + one catalog transaction each), and the most row
#: bytes one commit holds in memory (large models commit in smaller batches).
BATCH = int(os.environ.get("WDB_INGEST_BATCH", "4096"))
BATCH_BYTES = 256 << 20
#: processes that read, flatten and hash files ahead of the one writer (``WDB_INGEST_WORKERS``,
#: see :func:`ingest_workers`; 0 reads in the writing process), used for folders of at least
#: ``POOL_MIN_FILES`` files of at most ``POOL_MAX_BYTES`` each (a big file's row would cross a
#: pipe for nothing: its reading is I/O and one pass of hashing, and the writer streams it).
POOL_MIN_FILES = 64
POOL_MAX_BYTES = 64 << 20
POOL_WINDOW = 512  # files in flight at once: bounds the rows waiting for the writer
#: file suffixes the generic loader understands.
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", "")
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


@dataclass
class Found:
    """One checkpoint a reader found. ``load()`` returns a state dict (torch tensors or numpy
    arrays), or already-normalised ``(arrays, dtype names)``; when ``layout`` is set it returns
    one row in that layout's storage order instead (the flat format)."""

    source: str
    run: str
    step: int
    load: Callable[[], Any]
    metrics: dict[str, float] = field(default_factory=dict)
    kind: str | None = None
    split: str | None = None
    run_config: dict | None = None
    layout: Layout | None = None
    #: per-item error mask (bool ``[T]``) on eval set ``eval_set`` (no labels, ``n_items=T``).
    errors: np.ndarray | None = None
    eval_set: str | None = None
    #: set by a reader that already knows this item is bad (e.g. a manifest row naming no file).
    problem: str | None = None
    #: free-form JSON kept with the checkpoint (``checkpoints.meta``): a source's non-tensor entries.
    meta: dict | None = None
    #: True when ``step`` is a guess (a number in the file name, a position): a step counter the
    #: file itself holds (``global_step``, ``step``) then wins.
    step_guessed: bool = False
    #: set for a file that belongs with a checkpoint but holds no weights (optimizer, scheduler,
    #: RNG state, training arguments): counted as a companion, neither stored nor an error.
    companion: bool = False


@runtime_checkable
class Reader(Protocol):
    """The contract of an ingest format (a module or object; register it under the entry-point
    group ``wdb.readers``, or pass its file: ``wdb ingest DIR --format ./my_reader.py``).

    - ``detect(path) -> bool``: cheap; True when ``path`` (a folder or file) is in this format.
    - ``scan(path, options) -> Iterable[Found]``: one :class:`Found` per checkpoint, *without*
      loading tensors (``Found.load`` does that, lazily, so ingest can batch and hash). ``options``
      holds the CLI's ``space`` (a space name for formats whose files carry no tensor names).
      Raise ``wdb.errors.BadInput("<file>: <problem>")`` for a folder that cannot be read at all;
      a single bad checkpoint is a ``Found`` with ``problem`` set (ingest reports it and goes on).
    - ``PRIORITY`` (optional int, default 50): detection order among readers; the generic
      ``folder`` reader is 90 so that specific layouts win.

    ``Found.load()`` may return a state dict (torch tensors or numpy arrays) in any of the
    containers ingest unwraps, or a row when ``Found.layout`` is set. Metrics the source reported
    go in ``Found.metrics`` (eval set ``reported:<zoo>``), error sets in ``Found.errors``.
    """

    def detect(self, path: Path) -> bool: ...

    def scan(self, path: Path, options: dict) -> Iterable[Found]: ...


@dataclass
class IngestReport:
    """What one ingest did; the CLI prints it and exits 3 when anything was skipped."""

    format: str
    runs_added: int = 0
    checkpoints_added: int = 0
    checkpoints_existing: int = 0
    spaces: list[str] = field(default_factory=list)
    bytes_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    checkpoint_ids: list[int] = field(default_factory=list)
    #: the generator_runs row recording an outside generator's lineage (``--generator``)
    generator_run_id: int | None = None
    #: files kept next to checkpoints that hold no weights (``optimizer.pt``, ``rng_state.pth``)
    companions: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        """True when every file was ingested (or already present)."""
        return not self.skipped


# -- safe loading -------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


_STORAGE_NAMES = frozenset(_STORAGE_DTYPES.values())


class _Decline(Exception):
    """The fast loader does not handle this file; ``torch.load(weights_only=True)`` decides."""


@dataclass
class _Tensor:
    """A tensor read by the fast loader: numpy values plus the original dtype name."""

    array: np.ndarray
    dtype: str


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


def _np_dtype(name: str) -> np.dtype:
    return np.dtype("uint16") if name == "bfloat16" else np.dtype(name)


class _FastUnpickler(pickle.Unpickler):
    """The C unpickler restricted to the globals of a plain tensor state dict (Python docs'
    "restricting globals" recipe): any other global declines before anything is called."""

    def __init__(self, records: dict[str, memoryview], prefix: str):
        super().__init__(io.BytesIO(records[f"{prefix}data.pkl"]))
        self.records, self.prefix = records, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _Decline(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Decline("persistent id")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise _Decline("storage type")
        if key not in self.storages:
            dt = _np_dtype(stype.dtype)
            raw = self.records.get(f"{self.prefix}data/{key}")
            if raw is None or len(raw) < int(numel) * dt.itemsize:
                raise _Decline("short storage")
            self.storages[key] = np.frombuffer(raw, dtype=dt, count=int(numel))
        return (self.storages[key], stype.dtype)

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
        if meta:
            raise _Decline("tensor metadata")
        flat, dtype = storage
        size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if any(s < 0 for s in size + stride) or offset < 0:
            raise _Decline("negative stride")
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if math.prod(size) and (extent > flat.size or math.prod(size) > flat.size):
            raise _Decline("tensor past its storage, or a broadcast view")
        n, contiguous, expect = math.prod(size), True, 1
        for dim, st in zip(reversed(size), reversed(stride), strict=True):
            if dim != 1 and st != expect:
                contiguous = False
                break
            expect *= dim
        if contiguous:  # the common case: a read-only view of the file's bytes, no copy
            arr = flat[offset : offset + n].reshape(size)
        else:
            item = flat.itemsize
            view = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
            )
            arr = np.array(view, copy=True)
        if dtype == "bfloat16":  # exact widening: bf16 is the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return _Tensor(arr, dtype)


def _zip_records(data: bytes) -> dict[str, memoryview]:
    """Members of an uncompressed zip (what ``torch.save`` writes) as zero-copy views, each
    CRC-checked. Anything unusual (compression, zip64 sizes, bad bounds) declines."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if end < 0 or end + 22 > len(data):
        raise _Decline("no end of central directory")
    _, _, _, _, n, cd_size, cd_off, _ = struct.unpack_from("<IHHHHIIH", data, end)
    if n == 0xFFFF or cd_off == 0xFFFFFFFF or cd_off + cd_size > end:
        raise _Decline("zip64 or bad central directory")
    view, out, pos = memoryview(data), {}, cd_off
    for _ in range(n):
        if data[pos : pos + 4] != b"PK\x01\x02":
            raise _Decline("bad central directory entry")
        fields = struct.unpack_from("<IHHHHHHIIIHHHHHII", data, pos)
        method, crc, csize, usize = fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, local = fields[10], fields[11], fields[12], fields[16]
        name = data[pos + 46 : pos + 46 + name_len].decode("utf-8", "replace")
        pos += 46 + name_len + extra_len + comment_len
        if method != 0 or csize != usize or csize == 0xFFFFFFFF or local == 0xFFFFFFFF:
            raise _Decline("compressed or zip64 member")
        if data[local : local + 4] != b"PK\x03\x04" or local + 30 > len(data):
            raise _Decline("bad local header")
        lname, lextra = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + lname + lextra
        if start + usize > len(data):
            raise _Decline("member past the end of the file")
        member = view[start : start + usize]
        if zlib.crc32(member) != crc:
            raise _Decline("CRC mismatch")
        out[name] = member
    return out


def _fast_torch_load(path: Path) -> Any:
    """Read a ``torch.save`` zip of tensors without torch (or raise ``_Decline``)."""
    try:
        records = _zip_records(Path(path).read_bytes())
    except (OSError, struct.error) as exc:
        raise _Decline(str(exc)) from None
    pkl = [n for n in records if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise _Decline("no data.pkl")
    prefix = pkl[0][: -len("data.pkl")]
    order = records.get(f"{prefix}byteorder")
    if order is not None and bytes(order) != b"little":
        raise _Decline("big-endian")
    try:
        return _FastUnpickler(records, prefix).load()
    except _Decline:
        raise
    except Exception as exc:  # a bad pickle: let torch give the verdict
        raise _Decline(str(exc)) from None


def _torch_load(path: Path) -> Any:
    try:
        return _fast_torch_load(path)
    except _Decline:
        pass
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the verdict is below
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0])
        raise BadInput(f"refused to unpickle (not a plain tensor state dict): {detail}") from None
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise BadInput(f"corrupt or truncated torch file ({msg or type(exc).__name__})") from None


#: containers whose value is the weights, in the order they are tried (Lightning's
#: ``state_dict``, the common training-loop names, DeepSpeed's ``module``, an EMA copy last).
CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "ema",
    "state",
    "params",
)
#: top-level numbers of a bundle that count training progress: the checkpoint's step when the
#: reader only guessed it (first present wins; they must agree when both are present).
STEP_KEYS = ("global_step", "step")


@dataclass
class Loaded:
    """One checkpoint as read from its file(s): the tensors, plus what the file says about itself.

    ``meta`` holds the JSON-able non-tensor entries (``checkpoints.meta``) and, under
    ``not_stored``, the names of entries that are neither (optimizer state, callbacks);
    ``numbers`` the numeric top-level entries of a training bundle (``epoch``, ``global_step``,
    ``best_score``). A reader that gives a checkpoint as one row sets ``layout`` and ``row``
    instead of ``arrays``, or ``layout`` and ``stream`` for a row too large to hold twice.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    layout: Layout | None = None
    row: np.ndarray | None = None
    #: a row too large to hold twice: its segments in layout order, regenerated on each call
    stream: Callable[[], Iterable[np.ndarray]] | None = None

    def materialise(self) -> np.ndarray:
        """The streamed row as one array (for callers that need it whole)."""
        if self.row is None and self.stream is not None and self.layout is not None:
            self.row = np.empty(self.layout.n_params, dtype=self.layout.storage_dtype)
            pos = 0
            for seg in self.stream():
                self.row[pos : pos + seg.size] = seg
                pos += seg.size
        return self.row

    def step(self) -> int | None:
        """The file's own step counter, when it has one unambiguous integer value."""
        got = {int(self.numbers[k]) for k in STEP_KEYS if k in self.numbers}
        got |= {int(v) for k, v in self.meta.items() if k in STEP_KEYS and _is_number(v)}
        return got.pop() if len(got) == 1 else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_tensor(v: Any) -> bool:
    return isinstance(v, _Tensor | np.ndarray) or (
        type(v).__module__.startswith("torch") and hasattr(v, "untyped_storage")
    )


def _jsonable(v: Any, depth: int = 0) -> bool:
    """Small plain data (numbers, strings, lists and dicts of them) that the catalog can keep."""
    if v is None or isinstance(v, bool | str) or _is_number(v):
        return not isinstance(v, str) or len(v) <= 10_000
    if depth < 3 and isinstance(v, list | tuple) and len(v) <= 1000:
        return all(_jsonable(x, depth + 1) for x in v)
    if depth < 3 and isinstance(v, Mapping) and len(v) <= 1000:
        return all(isinstance(k, str) and _jsonable(x, depth + 1) for k, x in v.items())
    return False


def _set_aside(entries: Mapping, meta: dict, numbers: dict | None) -> None:
    """Non-tensor entries into ``meta`` (numbers also into ``numbers``); the rest named."""
    for k, v in entries.items():
        if _jsonable(v):
            meta[str(k)] = list(v) if isinstance(v, tuple) else v
            if numbers is not None and _is_number(v):
                numbers[str(k)] = float(v)
        else:
            meta.setdefault("not_stored", []).append(str(k))


def unbundle(obj: Any) -> Loaded:
    """A loaded object → its tensors and its metadata, refusing what cannot be weights.

    Containers (:data:`CONTAINER_KEYS`, up to three levels: Lightning ``.ckpt``,
    ``{'model': ..., 'optimizer': ...}`` bundles, DeepSpeed ``module``) are unwrapped; their other
    entries are metadata, never a reason to refuse the weights. Inside the state dict, non-tensor
    entries (a ``step`` int, a ``note`` string) become metadata too. Complex tensors are refused
    with one line: weights are real, and a silent split into two columns would change the layout.
    """
    meta: dict = {}
    numbers: dict[str, float] = {}
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        key = next(
            (k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping) and obj.get(k)), None
        )
        if key is None:
            break
        _set_aside({k: v for k, v in obj.items() if k != key}, meta, numbers)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise BadInput(f"not a state dict (a {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
    _set_aside({k: v for k, v in obj.items() if k not in tensors}, meta, None)
    if not tensors:
        rest = ", ".join(f"'{k}'" for k in list(obj)[:5])
        raise BadInput(f"no tensors in the state dict (entries: {rest or 'none'})")
    arrays, dtypes = _tensors_to_numpy(tensors)
    return Loaded(arrays, dtypes, meta, numbers)


def _tensors_to_numpy(state: Mapping) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not all(isinstance(k, str) for k in state):
        raise BadInput("state dict keys are not all strings")
    if all(isinstance(v, _Tensor) for v in state.values()):
        arrays = {k: v.array for k, v in state.items()}
        dtypes = {k: v.dtype for k, v in state.items()}
        for k in arrays:  # the pickle could have rewritten these attributes (BUILD)
            if not isinstance(arrays[k], np.ndarray) or dtypes[k] not in _STORAGE_NAMES:
                raise BadInput(f"entry '{k}' is not a plain tensor")
    else:
        for k, v in state.items():
            if type(v).__module__.startswith("torch"):
                if v.is_complex():
                    raise BadInput(
                        f"entry '{k}' is a complex tensor ({str(v.dtype).removeprefix('torch.')}): "
                        "not stored; save its real and imaginary parts as two tensors"
                    )
                if v.numel() > v.untyped_storage().nbytes() // max(1, v.element_size()):
                    raise BadInput(f"entry '{k}' is a broadcast view larger than its storage")
        state = {k: (v.array if isinstance(v, _Tensor) else v) for k, v in state.items()}
        arrays, dtypes = state_to_numpy(state)
    for name, arr in arrays.items():
        check_finite(name, arr, dtypes[name])
    return arrays, dtypes


def check_finite(name: str, arr: np.ndarray, dtype: str) -> None:
    """Refuse NaN/Inf in a float tensor (one line naming the tensor)."""
    # a float64 sum is finite iff no value is NaN/Inf (for float16/32 it cannot overflow;
    # for float64 an overflowing sum falls through to the exact test)
    if (
        dtype in FLOAT_DTYPES
        and not np.isfinite(arr.sum(dtype=np.float64))
        and not np.isfinite(arr).all()
    ):
        kind = "NaN" if np.isnan(arr).any() else "Inf"
        raise BadInput(f"'{name}' contains {kind} values")


def normalise(state: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Any loaded object → (arrays, dtype names); see :func:`unbundle` for what is kept."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        arrays, dtypes = state
        for name, arr in arrays.items():
            check_finite(name, arr, dtypes[name])
        return arrays, dtypes
    got = state if isinstance(state, Loaded) else unbundle(state)
    return got.arrays, got.dtypes


def _sha256(row: np.ndarray) -> str:
    """``wdb.store.spaces.row_sha256`` without the ``tobytes`` copy (same digest)."""
    return hashlib.sha256(np.ascontiguousarray(row).data).hexdigest()


def _digest(row: np.ndarray | RowStream) -> str:
    """The row's content hash; a streamed row is read (and validated) once, segment by segment."""
    if not isinstance(row, RowStream):
        return _sha256(row)
    h, n = hashlib.sha256(), 0
    for seg in row.segments():
        h.update(np.ascontiguousarray(seg).data)
        n += seg.size
    if n != row.n:
        raise BadInput(f"the checkpoint's tensors hold {n} values, its layout {row.n}")
    return h.hexdigest()


def load_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load one checkpoint file of any supported kind safely → (arrays, dtype names)."""
    got = read_checkpoint(path)
    if got.layout is not None and not got.arrays:
        row = got.materialise()
        return got.layout.unflatten(row), {e.name: e.dtype for e in got.layout.entries}
    return got.arrays, got.dtypes


def read_checkpoint(path: str | os.PathLike) -> Loaded:
    """Load one checkpoint file safely → :class:`Loaded` (tensors plus the file's metadata).

    A ``*.index.json`` (Hugging Face's sharded safetensors or ``.bin``) is read as the one
    checkpoint its shards make up (:func:`read_sharded`).
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return read_sharded(path)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise BadInput("empty file (truncated?)")
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file as st_load

            state = st_load(str(path), device="cpu")
        except Exception as exc:
            raise BadInput(f"corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        except ValueError as exc:
            raise BadInput(f"refused .npz ({str(exc).splitlines()[0]})") from None
        except Exception as exc:
            raise BadInput(f"corrupt .npz file ({str(exc).splitlines()[0]})") from None
    else:
        state = _torch_load(path)
    return unbundle(state)


SHARD_NAME = re.compile(r"^(?P<base>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.safetensors|\.bin)$")


def read_index(index: Path) -> list[tuple[Path, list[str]]]:
    """A sharded checkpoint's index → [(shard file, its tensor names in index order)]."""
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError("empty")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"not a shard index ('weight_map' missing or invalid: {exc})") from None
    shards: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file:
            raise BadInput(f"shard '{file}' of '{name}' is not a file name beside the index")
        shards.setdefault(file, []).append(name)
    out = []
    for file, names in shards.items():
        if not (index.parent / file).is_file():
            raise BadInput(f"shard '{file}' is missing")
        out.append((index.parent / file, names))
    return out


def read_sharded(index: Path) -> Loaded:
    """A sharded checkpoint (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``
    with its shards) → one :class:`Loaded` whose row is streamed, never held whole.

    The layout comes from the safetensors headers (a ``.bin`` shard is read once for its
    shapes); ``Loaded.stream`` yields the row tensor by tensor, shard by shard, so ingest hashes
    it in one pass and writes it into the store chunk by chunk in another: memory holds one
    shard's pages and one chunk, not the model. Tensor order is shard by shard, each shard's
    tensors in ``weight_map`` order; every shard must hold exactly the tensors the index names.
    """
    shards = read_index(index)
    entries, offset = [], 0
    for path, names in shards:
        for name, shape, dtype in _shard_specs(path, names):
            entries.append(Entry(name, shape, dtype, offset))
            offset += math.prod(shape)
    layout = Layout(tuple(entries), storage_dtype_of([e.dtype for e in entries]))

    def stream() -> Iterable[np.ndarray]:
        for path, names in shards:
            for name, arr, dtype in _shard_tensors(path, names):
                check_finite(name, arr, dtype)
                yield layout.segment(layout.entry(name), arr)

    meta = {"shards": len(shards), "shard_format": shards[0][0].suffix.lstrip(".")}
    return Loaded(meta=meta, layout=layout, stream=stream)


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor entries of the header, offset of the data) of a ``.safetensors`` file: an 8-byte
    little-endian header length, then a JSON header (the format's whole specification)."""
    try:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100 << 20:
                raise ValueError("header larger than 100 MB")
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError) as exc:
        raise BadInput(f"{path.name}: corrupt safetensors shard ({exc})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def _shard_specs(path: Path, names: list[str]) -> Iterable[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of a shard's tensors in index order, checked against the index."""
    if path.suffix == ".safetensors":
        header, _ = _safetensors_header(path)
        _same_names(path, names, set(header))
        for name in names:
            info = header[name]
            dtype = _ST_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise BadInput(f"{path.name}: '{name}' has unsupported dtype {info.get('dtype')}")
            yield name, tuple(int(d) for d in info["shape"]), dtype
        return
    for name, arr, dtype in _shard_tensors(path, names):
        yield name, tuple(arr.shape), dtype


def _shard_tensors(path: Path, names: list[str]) -> Iterable[tuple[str, np.ndarray, str]]:
    """(name, array, dtype name) per tensor of one shard, one at a time.

    safetensors shards are read tensor by tensor with plain reads into a fresh array (not
    through a memory map, whose touched pages would count against this process until the whole
    shard is done); bf16 is widened exactly to float32, as everywhere in wdb.
    """
    if path.suffix == ".safetensors":
        header, base = _safetensors_header(path)
        with path.open("rb") as fh:
            for name in names:
                info = header[name]
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                start, stop = (int(x) for x in info["data_offsets"])
                raw = np.empty(math.prod(shape), dtype=_np_dtype(dtype).newbyteorder("<"))
                fh.seek(base + start)
                if (
                    stop - start != raw.nbytes
                    or fh.readinto(memoryview(raw).cast("B")) != raw.nbytes
                ):
                    raise BadInput(f"{path.name}: '{name}' is truncated or its offsets are wrong")
                arr = (raw.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else raw
                yield name, arr.reshape(shape), dtype
        return
    try:
        got = unbundle(_torch_load(path))
    except BadInput as exc:
        raise BadInput(f"{path.name}: {exc}") from None
    _same_names(path, names, set(got.arrays))
    for name in names:
        yield name, got.arrays[name], got.dtypes[name]


def _same_names(path: Path, names: list[str], have: set[str]) -> None:
    if set(names) != have:
        missing, extra = sorted(set(names) - have)[:3], sorted(have - set(names))[:3]
        raise BadInput(
            f"{path.name} does not match the index (missing {missing}, not listed {extra})"
        )


#: safetensors dtype codes wdb stores (others are refused by name).
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def step_from_name(stem: str) -> int | None:
    """The last integer in a file or folder name (``epoch_012`` → 12), or None."""
    digits, out = "", None
    for ch in stem:
        if ch.isdigit():
            digits += ch
        elif digits:
            out, digits = int(digits), ""
    return int(digits) if digits else out


# -- the engine ---------------------------------------------------------------------------------


def format_names() -> list[str]:
    """Registered ingest formats, in detection order."""
    from wdb import plugins

    found = plugins.names(READER_GROUP)
    return sorted(found, key=lambda n: (int(getattr(reader(n), "PRIORITY", DEFAULT_PRIORITY)), n))


def reader(ref: str) -> Reader:
    """The reader registered as ``ref``, or defined by the ``.py`` file ``ref``."""
    from wdb import plugins
    from wdb.errors import NotFound

    try:
        obj = plugins.load(READER_GROUP, ref)
    except NotFound as exc:
        raise BadInput(str(exc).replace("unknown reader", "unknown format")) from None
    if not isinstance(obj, Reader):
        raise BadInput(f"format '{ref}': {obj!r} has no detect(path) and scan(path, options)")
    return obj


def detect_format(path: Path) -> str:
    """The first registered format whose reader recognises ``path``."""
    names = format_names()
    for name in names:
        if reader(name).detect(path):
            return name
    raise BadInput(
        f"{path}: no checkpoint files found in a known layout ({', '.join(names)}); "
        "use --format to force one"
    )


@dataclass
class _Item:
    found: Found
    layout: Layout
    row: np.ndarray | RowStream | None
    sha256: str
    nbytes: int


def _as_loaded(obj: Any) -> Loaded:
    """What a reader's ``load()`` returned, as a :class:`Loaded`: already one, normalised
    ``(arrays, dtype names)``, or a state dict or training bundle (:func:`unbundle`)."""
    if isinstance(obj, Loaded):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], dict):
        return Loaded(*normalise(obj))
    return unbundle(obj)


class _Ingest:
    def __init__(self, db, path, zoo, kind, strict, space, fmt):
        self.db, self.path, self.zoo, self.kind = db, path, zoo, kind
        self.strict, self.space_name = strict, space
        self.report = IngestReport(format=fmt)
        self.forced_layout: Layout | None = None
        # layout hash → seen count; accepted layouts; items of layouts seen once so far
        self.count: Counter = Counter()
        self.accepted: dict[str, bool] = {}
        self.pending: dict[str, list[_Item]] = defaultdict(list)
        self.ready: dict[str, list[_Item]] = defaultdict(list)
        self.ready_bytes: Counter = Counter()
        self.layouts: dict[str, Layout] = {}
        self.spaces: dict[str, Any] = {}
        self.keys: dict[tuple[str, int, str], str] = {}
        self.buffer_budget = int(os.environ.get("WDB_INGEST_BUFFER_MB", "1024")) << 20
        self.buffered = 0
        self.run_zoo: dict[str, str | None] = {}
        self.new_runs: set[str] = set()
        self.created_runs: set[str] = set()
        self.layout_cache: dict[tuple, Layout] = {}
        self.generator_run_id: int | None = None
        # (run, tensor names and dtypes) → the layout hash that run's files have
        self.run_layout: dict[tuple[str, tuple], str] = {}

    # ---- skipping
    def skip(self, source: str, reason: str) -> None:
        if self.strict:
            raise BadInput(f"{source}: {reason}")
        self.report.skipped.append((source, reason))

    # ---- per file
    def prepare(self, f: Found, pre: tuple | None = None) -> _Item | None:
        """One found file → an item to write, or None (skipped, or a companion). ``pre`` is
        what a pool worker already made of it (:func:`_prepare_in_worker`)."""
        if f.problem:
            self.skip(f.source, f.problem)
            return None
        if f.companion:
            self.report.companions.append(f.source)
            return None
        if pre is not None and pre[0] == "skip":
            self.skip(f.source, pre[1])
            return None
        try:
            if pre is not None:
                _, layout, row, sha, got = pre
                layout = self.layouts.get(layout.hash, layout)
                self.adopt(f, got)
            elif f.layout is not None:
                layout = f.layout
                row = np.asarray(f.load())
                row = _check_row(layout, row)
                sha = _digest(row)
            else:
                layout, row, got = self._row(f.load())
                self.adopt(f, got)
                sha = _digest(row)
        except WdbError as exc:
            self.skip(f.source, str(exc))
            return None
        except Exception as exc:  # a reader bug or an exotic failure: still one line per file
            self.skip(f.source, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        kind = f.kind or self.kind
        from wdb.store.write import KINDS

        if kind not in KINDS:
            self.skip(f.source, f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
            return None
        f.kind = kind
        self.layouts.setdefault(layout.hash, layout)
        nbytes = layout.n_params * np.dtype(layout.storage_dtype).itemsize
        return _Item(f, layout, row, sha, nbytes)

    def _row(self, obj: Any) -> tuple[Layout, np.ndarray | RowStream, Loaded]:
        """A reader's loaded object → (layout, row, the :class:`Loaded` it was read as)."""
        got = _as_loaded(obj)
        if got.stream is not None and got.layout is not None:
            return got.layout, RowStream(got.layout.n_params, got.stream), got
        return (*_flat_row(got, self.layout_cache), got)

    @staticmethod
    def adopt(f: Found, got: Loaded) -> None:
        """What the file says about itself: metadata, its step counter when the reader only
        guessed the step, and its other top-level numbers (``epoch``, ``best_score``) as reported
        metrics (the reader's own metrics win)."""
        if got.meta:
            f.meta = {**got.meta, **(f.meta or {})}
        step = got.step()
        if f.step_guessed and step is not None:
            f.step = step
        for k, v in got.numbers.items():
            if k not in STEP_KEYS:
                f.metrics.setdefault(k, v)

    def add(self, item: _Item) -> None:
        h = item.layout.hash
        forced = self.forced_layout
        if forced is not None and h != forced.hash:
            why = (
                _mismatch(item.layout, forced)
                if item.layout.names == forced.names
                else "tensor names differ from the layout given with --space"
            )
            self.skip(item.found.source, why)
            return
        self.count[h] += 1
        if forced is not None or h in self.accepted:
            self.route(item)
            return
        self.pending[h].append(item)
        if self.count[h] >= 2:
            self.accepted[h] = True
            for it in self.pending.pop(h):
                self.route(it)

    def route(self, item: _Item) -> None:
        want = item.layout
        mine = (item.found.run, _signature(want))
        theirs = self.run_layout.setdefault(mine, want.hash)
        if theirs != want.hash:  # same tensor names as the run's other files, other shapes
            self.skip(item.found.source, _mismatch(want, self.layouts[theirs]))
            return
        key = (item.found.run, item.found.step, want.hash)
        if key in self.keys:
            self.skip(
                item.found.source,
                f"duplicate of {self.keys[key]} (run '{key[0]}' step {key[1]})",
            )
            return
        self.keys[key] = item.found.source
        if self.strict and not isinstance(item.row, RowStream):  # a stream holds no memory
            self.buffered += item.nbytes
            if self.buffered > self.buffer_budget:
                item.row = None  # re-read at commit time
        self.ready[want.hash].append(item)
        self.ready_bytes[want.hash] += item.nbytes
        if not self.strict and (
            len(self.ready[want.hash]) >= BATCH or self.ready_bytes[want.hash] >= BATCH_BYTES
        ):
            self.flush(want.hash)

    def finish_pending(self) -> None:
        """Layouts seen in only one file: each is its own architecture (its own space) unless
        its run already has files with the same tensor names in another shape (``route``)."""
        for h in list(self.pending):  # insertion order = order first seen
            self.accepted[h] = True
            for it in self.pending.pop(h):
                self.route(it)

    # ---- writing
    def space_for(self, h: str):
        if h in self.spaces:
            return self.spaces[h]
        layout = self.layouts[h]
        if not self.spaces:
            name = self.space_name or self.zoo
        else:
            name = f"{self.space_name or self.zoo}-{layout.default_name()}"
        space = self.db.ensure_space(layout, name)
        self.spaces[h] = space
        if space.name not in self.report.spaces:
            self.report.spaces.append(space.name)
        return space

    def check_runs(self, items: list[_Item]) -> list[_Item]:
        """Drop items whose run name already belongs to another zoo."""
        names = sorted({it.found.run for it in items} - set(self.run_zoo))
        if names:
            for r in self.db.sql(
                "SELECT name, zoo FROM runs WHERE name IN (SELECT unnest(CAST(:n AS VARCHAR[])))"
                if self.db.catalog.duckdb_file
                else "SELECT name, zoo FROM runs WHERE name = ANY(:n)",
                {"n": names},
            ):
                self.run_zoo[r["name"]] = r["zoo"]
            for n in names:
                if n not in self.run_zoo:
                    self.run_zoo[n] = self.zoo
                    self.new_runs.add(n)
        keep = []
        for it in items:
            owner = self.run_zoo[it.found.run]
            if owner != self.zoo:
                self.skip(
                    it.found.source,
                    f"run '{it.found.run}' already exists in zoo '{owner}' (rename it or use --zoo)",
                )
            else:
                keep.append(it)
        return keep

    def check_conflicts(self, h: str, items: list[_Item]) -> None:
        """Strict mode: find every item the commit would refuse, before writing anything."""
        space_rows = self.db.sql("SELECT id FROM spaces WHERE hash = :h", {"h": h})
        if not space_rows:
            return
        stored = {
            (r["run"], int(r["step"])): r["sha256"]
            for r in self.db.sql(
                "SELECT run, step, sha256 FROM checkpoint_info WHERE space_id = :s",
                {"s": space_rows[0]["id"]},
            )
        }
        for it in items:
            sha = stored.get((it.found.run, it.found.step))
            if sha is not None and sha != it.sha256:
                self.skip(
                    it.found.source,
                    f"run '{it.found.run}' step {it.found.step} already stored with different "
                    "content",
                )

    def flush(self, h: str) -> None:
        from wdb.store.write import NewCheckpoint

        items = self.ready.pop(h, [])
        self.ready_bytes.pop(h, None)
        if not items:
            return
        items = self.check_runs(items)
        if not items:
            return
        space = self.space_for(h)
        news, kept = [], []
        for it in items:
            row = it.row
            if row is None:
                row = self._reload(it)
                if row is None:
                    continue
            f = it.found
            news.append(
                NewCheckpoint(
                    run=f.run,
                    step=int(f.step),
                    row=row,
                    kind=f.kind or self.kind,
                    zoo=self.zoo,
                    metrics={k: float(v) for k, v in f.metrics.items()},
                    split=f.split,
                    source=f.source,
                    run_config=f.run_config,
                    sha256=it.sha256,
                    generator_run_id=self.generator_run_id,
                    meta=f.meta,
                )
            )
            kept.append(it)
            it.row = None
        by_key = {(n.run, n.step): it for n, it in zip(news, kept, strict=True)}
        result = self.db.write_checkpoints(space, news)
        for n, why in result.conflicts:
            by_key.pop((n.run, n.step), None)
            self.skip(n.source or n.run, f"run '{n.run}' step {n.step}: {why}")
        self.report.checkpoints_added += len(result.added)
        self.report.checkpoints_existing += len(result.existing)
        self.report.bytes_written += (
            len(result.added)
            * space.layout.n_params
            * np.dtype(space.layout.storage_dtype).itemsize
        )
        # ids per (run, step): write_checkpoints returns new ids in order of the new items and existing
        # ids in order of the existing ones; when both kinds are mixed, ask the catalog.
        clean = [n for n in news if (n.run, n.step) in by_key]
        if not result.existing and len(result.added) == len(clean):
            ids = {(n.run, n.step): c for n, c in zip(clean, result.added, strict=True)}
        elif not result.added and len(result.existing) == len(clean):
            ids = {(n.run, n.step): c for n, c in zip(clean, result.existing, strict=True)}
        else:
            ids = self._ids(space, [(n.run, n.step) for n in clean])
        self.report.checkpoint_ids += [ids[k] for k in by_key if k in ids]
        # a run unknown before this ingest was created by the commit of its first checkpoint
        self.created_runs |= {n.run for n in clean} & self.new_runs
        self._write_errors(ids, by_key)

    def _reload(self, it: _Item) -> np.ndarray | RowStream | None:
        f = it.found
        try:
            if f.layout is not None:
                row = _check_row(f.layout, np.asarray(f.load()))
            else:
                layout, row, _ = self._row(f.load())
                if layout.hash != it.layout.hash:
                    raise BadInput("file changed while being ingested")
        except WdbError as exc:
            self.skip(f.source, str(exc))
            return None
        if _digest(row) != it.sha256:
            self.skip(f.source, "file changed while being ingested")
            return None
        return row

    def _ids(self, space, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        runs = sorted({k[0] for k in keys})
        rows = self.db.sql(
            "SELECT run, step, checkpoint_id FROM checkpoint_info WHERE space_id = :s AND run IN "
            "(SELECT unnest(CAST(:r AS VARCHAR[])))"
            if self.db.catalog.duckdb_file
            else "SELECT run, step, checkpoint_id FROM checkpoint_info "
            "WHERE space_id = :s AND run = ANY(:r)",
            {"s": space.id, "r": runs},
        )
        return {(r["run"], int(r["step"])): int(r["checkpoint_id"]) for r in rows}

    def _write_errors(self, ids: dict, by_key: dict) -> None:
        from wdb.study.outputs import ensure_eval_set, has_outputs, write_outputs

        groups: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for key, it in by_key.items():
            if it.found.errors is not None and it.found.eval_set and key in ids:
                groups[it.found.eval_set].append((ids[key], it.found.errors))
        for name, pairs in groups.items():
            n_items = int(np.asarray(pairs[0][1]).shape[-1])
            eid = ensure_eval_set(self.db, name, None, None, n_items=n_items)
            done = has_outputs(self.db, eid, "errors")
            todo = [(c, m) for c, m in pairs if c not in done]
            if todo:
                write_outputs(
                    self.db,
                    eid,
                    "errors",
                    [c for c, _ in todo],
                    np.stack([np.asarray(m, dtype=np.uint8) for _, m in todo]),
                )

    def flush_all(self) -> None:
        for h in list(self.ready):
            if self.strict:
                self.check_runs(self.ready[h])
                self.check_conflicts(h, self.ready[h])
        for h in list(self.ready):
            self.flush(h)


def _signature(layout: Layout) -> tuple:
    """What makes files of one run "the same architecture": names and dtypes (a run saved partly
    in fp16 gets a second space; a different *shape* under the same names is a mismatch)."""
    return tuple((e.name, e.dtype) for e in layout.entries)


def _mismatch(got: Layout, want: Layout) -> str:
    for a, b in zip(got.entries, want.entries, strict=False):
        if a.shape != b.shape:
            return f"shape mismatch: '{a.name}' is {list(a.shape)}, expected {list(b.shape)}"
        if a.dtype != b.dtype:
            return f"dtype mismatch: '{a.name}' is {a.dtype}, expected {b.dtype}"
    return "layout mismatch with the zoo's dominant layout"


def _check_row(layout: Layout, row: np.ndarray) -> np.ndarray:
    """A row given directly (flat format): right width, finite, exactly storable."""
    if row.ndim != 1 or row.shape[0] != layout.n_params:
        raise BadInput(f"row has {row.shape[-1]} values, the layout has {layout.n_params}")
    if not np.issubdtype(row.dtype, np.number):
        raise BadInput(f"row dtype {row.dtype} is not numeric")
    if not np.isfinite(row).all():
        raise BadInput("row contains NaN or Inf values")
    stored = row.astype(layout.storage_dtype)
    back = layout.flatten(layout.unflatten(stored))
    if not np.array_equal(back, stored) or not np.array_equal(
        stored.astype(row.dtype, copy=False), row
    ):
        raise BadInput("row values are not exactly representable in the layout's dtypes")
    return stored


_POOL_FOUND: list[Found] = []  # what forked workers read their files from


def ingest_workers() -> int:
    """Reader processes for an ingest, ``WDB_INGEST_WORKERS`` (default 0: the writer reads
    the files itself).

    Off by default because it did not pay where it was measured: on 2 cores, 2,000 files of
    40 KB took 2.35-3.1 s read by the writer and 2.6-3.6 s with 1 or 2 reader processes (a
    loop of ``db.ingest`` calls on ``benchmarks/bench_ingest.py``'s zoo; the benchmark itself
    prints both). Shipping each row back to the writer (pickling the 2,000 rows, 77 MB, took
    0.45 s there) costs about what parsing it does, and the writer's own work
    (Zarr encoding, already threaded, and the catalog) is the longer half. Machines with more
    cores than that may gain; measure with the benchmark before turning it on.
    """
    env = os.environ.get("WDB_INGEST_WORKERS", "0")
    try:
        return max(0, int(env))
    except ValueError:
        raise BadInput(f"WDB_INGEST_WORKERS must be a whole number, not {env!r}") from None


def _poolable(f: Found) -> bool:
    """Files a worker may read: plain checkpoint files, not shard sets (streamed by the
    writer), not rows a reader hands over itself, not problems or companions."""
    if f.problem or f.companion or f.layout is not None or f.source.endswith(".index.json"):
        return False
    try:
        return os.stat(f.source).st_size <= POOL_MAX_BYTES
    except OSError:
        return False


def _flat_row(got: Loaded, cache: dict[tuple, Layout]) -> tuple[Layout, np.ndarray]:
    """(layout, row) of a loaded state dict (or the reader's own row). Equal layouts come out
    as one object from ``cache``: the writer's, or a worker's, whose results then pickle each
    layout once per batch rather than once per file."""
    if got.row is not None and got.layout is not None:
        return got.layout, got.row
    key = tuple((k, a.shape, got.dtypes[k]) for k, a in got.arrays.items())
    layout = cache.get(key)
    if layout is None:
        layout = cache[key] = Layout.from_arrays(got.arrays, got.dtypes)
    return layout, layout.flatten(got.arrays)


_WORKER_LAYOUTS: dict[tuple, Layout] = {}


def _prepare_in_worker(i: int) -> tuple | None:
    """In a forked worker: read file ``i``, flatten it and hash the row. Returns ``("ok",
    layout, row, sha256, Loaded without its tensors)``, ``("skip", reason)``, or None for
    "let the writer do it" (a reader that streams)."""
    f = _POOL_FOUND[i]
    try:
        obj = f.load()
        got = _as_loaded(obj)
        if got.stream is not None:
            return None
        layout, row = _flat_row(got, _WORKER_LAYOUTS)
        light = Loaded(meta=got.meta, numbers=got.numbers)
        return ("ok", layout, row, _digest(row), light)
    except WdbError as exc:
        return ("skip", str(exc))
    except Exception as exc:
        return ("skip", f"unreadable ({type(exc).__name__}: {exc})")


def _prefetched(found: list[Found]) -> Iterable[tuple[Found, tuple | None]]:
    """``(found, what a worker made of it or None)`` in the scan's order.

    The heavy part of ingesting many small files is parsing them (zip, pickle, tensor views)
    and flattening and hashing the rows, all of which holds the GIL; forked worker processes do
    it for windows of files ahead of the writer, which alone touches the catalog and the
    store. Fork (not spawn) so that workers start in milliseconds with the readers' state; where
    fork is unavailable, or the folder is small, the writer reads the files itself.
    """
    import multiprocessing as mp

    workers = ingest_workers()
    pool_idx = [i for i, f in enumerate(found) if _poolable(f)]
    if workers < 1 or len(pool_idx) < POOL_MIN_FILES or "fork" not in mp.get_all_start_methods():
        for f in found:
            yield f, None
        return
    global _POOL_FOUND
    _POOL_FOUND = found
    pooled = set(pool_idx)
    windows = [
        range(a, min(a + POOL_WINDOW, len(found))) for a in range(0, len(found), POOL_WINDOW)
    ]
    try:
        with mp.get_context("fork").Pool(workers) as pool:

            def submit(w: range) -> Any:
                todo = [i for i in w if i in pooled]
                chunk = max(1, len(todo) // (4 * workers))
                return todo, pool.map_async(_prepare_in_worker, todo, chunk)

            ahead = submit(windows[0])
            for k, window in enumerate(windows):
                todo, res = ahead
                if k + 1 < len(windows):  # the next window is read while this one is written
                    ahead = submit(windows[k + 1])
                results = dict(zip(todo, res.get(), strict=True))
                for i in window:
                    yield found[i], results.get(i)
    finally:
        _POOL_FOUND = []


def ingest(
    db,
    path: Path,
    zoo: str | None = None,
    kind: str | None = None,
    format: str | None = None,  # noqa: A002
    strict: bool = False,
    space: str | None = None,
    generator: str | None = None,
    trained_on: str | None = None,
    generator_config: dict | None = None,
) -> IngestReport:
    """Ingest every checkpoint under ``path`` (see the module docstring for the rules).

    With ``generator``, the checkpoints are an outside generator's samples (kind ``generated``
    unless ``kind`` says otherwise): one ``generator_runs`` row records the method name, the
    training selection ``trained_on`` (SQL over ``checkpoint_info``) with its exact ids, and
    ``generator_config``, and every new checkpoint's run points to it, so analyses treat the
    samples exactly like a built-in generator's.
    """
    from wdb.progress import progress
    from wdb.store.write import KINDS

    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if trained_on and not generator:
        raise BadInput("--trained-on needs --generator NAME (whose training set it describes)")
    kind = kind or ("generated" if generator else "training")
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
    fmt = format or detect_format(path)
    mod = reader(fmt)
    zoo = zoo or (path.resolve().name if path.is_dir() else path.resolve().parent.name)
    job = _Ingest(db, path, zoo, kind, strict, space, fmt)
    if space and space.lower().endswith(".json") and Path(space).is_file():
        try:
            job.forced_layout = Layout.from_json(Path(space).read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{space}: not a layout file ({exc})") from None
        job.space_name = None  # a layout file names no space: the zoo name is used
    elif space:
        try:
            job.forced_layout = db.space(space).layout
        except WdbError:
            job.forced_layout = None  # a new space of that name
    if job.forced_layout is not None:
        job.layouts[job.forced_layout.hash] = job.forced_layout
    options = {
        "db": db,
        "zoo": zoo,
        "kind": kind,
        "space": space,
        "strict": strict,
        "layout": job.forced_layout,
    }
    found: Iterable[Found] = mod.scan(path, options)
    found = list(found)
    if generator:
        from wdb.study.generate import finish_outside_run, start_outside_run

        job.generator_run_id = start_outside_run(
            db, generator, trained_on, generator_config, source=str(path)
        )
        job.report.generator_run_id = job.generator_run_id
    try:
        bar = progress(total=len(found), desc=f"ingest {path.name}")
        for f, pre in _prefetched(found):
            item = job.prepare(f, pre)
            if item is not None:
                job.add(item)
            bar.update(1)
        bar.close()
        job.finish_pending()
        job.flush_all()
    except BaseException as exc:
        if job.generator_run_id is not None:
            finish_outside_run(db, job.generator_run_id, job.report.checkpoints_added, exc)
        raise
    if job.generator_run_id is not None:
        kept = finish_outside_run(db, job.generator_run_id, job.report.checkpoints_added)
        job.report.generator_run_id = job.generator_run_id if kept else None
    job.report.runs_added = len(job.created_runs)
    return job.report
