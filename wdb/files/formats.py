"""Which weight format a file is in (by its bytes first, then its name), and readers for the
formats beyond torch / safetensors / ``.npz``: ONNX, TorchScript, GGUF, Keras 3 HDF5, Flax
msgpack (:mod:`wdb.files.flax`).

Every reader keeps each tensor's dtype bit-exactly (bf16 widened exactly to float32, as
everywhere in wdb) and runs no code from the file. A format wdb recognises but cannot store
raises :class:`NotStored` (its message starts with ``not stored:``): ingest counts it as a
file it understood, not as an error.
"""

from __future__ import annotations

import importlib.util
import struct
import zipfile
from pathlib import Path

import numpy as np

from wdb.errors import BadInput
from wdb.files.names import WEIGHT_SUFFIXES
from wdb.store.tensors import bf16_widen

NOT_STORED = "not stored: "
#: the first bytes of a legacy (non-zip) ``torch.save`` file: a pickled magic number.
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_HDF5 = b"\x89HDF\r\n\x1a\n"
#: formats read by ``wdb.files.checkpoint.read_checkpoint`` (the others are read here).
CLASSIC = ("torch", "torch-legacy", "safetensors", "npz")
#: the Python package each format's reader needs, and its ``pip install`` name.
NEEDS = {"onnx": "onnx", "gguf": "gguf", "keras": "h5py", "hdf5": "h5py", "msgpack": "msgpack"}
_BY_NAME = {
    ".onnx": "onnx",
    ".gguf": "gguf",
    ".msgpack": "msgpack",
    ".safetensors": "safetensors",
    ".npz": "npz",
    ".keras": "keras",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".jit": "torchscript",
}


class NotStored(BadInput):
    """A file wdb recognised as weights but does not store (the message says why)."""

    def __init__(self, why: str):
        super().__init__(NOT_STORED + why)


def _central_directory(path: Path) -> bytes | None:
    """A zip's central directory (every member name) read raw: two reads, where ``zipfile``
    parses every entry into objects (3x the whole folder scan). None for zip64 or damage."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            fh.seek(max(0, size - 65557))
            tail = fh.read()
            end = tail.rfind(b"PK\x05\x06")
            if end < 0 or end + 22 > len(tail):
                return None
            cd_size, cd_off = struct.unpack_from("<II", tail, end + 12)
            if 0xFFFFFFFF in (cd_size, cd_off) or cd_off + cd_size > size:
                return None
            fh.seek(cd_off)
            return fh.read(cd_size)
    except (OSError, struct.error):
        return None


def _zip_kind(path: Path) -> str | None:
    cd = _central_directory(path)
    if cd is not None:
        names = [cd]  # substring tests over the raw names
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n.encode() for n in zf.namelist()]
        except (zipfile.BadZipFile, OSError, ValueError):
            return "torch"  # a damaged zip: the torch loader names the problem
    text = b"\n".join(names)
    if b"/code/__torch__" in text or b"/constants.pkl" in text:
        return "torchscript"
    if b"data.pkl" in text:
        return "torch"
    if b"model.weights.h5" in text:
        return "keras"
    if b".npy" in text:
        return "npz"
    return None


def sniff(path: str | Path) -> str | None:
    """The weight format of ``path``, or None for a file that does not look like weights.

    By content first: zip (TorchScript when it holds ``code/__torch__`` or ``constants.pkl``, torch when
    it holds ``data.pkl``, a ``.keras`` archive, ``.npz``), the legacy torch pickle's magic
    number, safetensors' length-prefixed JSON header, ``GGUF``, ``\\x89HDF``; then by name
    (``.onnx`` and ``.msgpack`` carry no magic; a ``.pt``/``.pth``/``.bin``/``.ckpt`` whose bytes
    match nothing is still "torch", so its loader names the problem). Names: ``torch``,
    ``torch-legacy``, ``safetensors``, ``npz``, ``torchscript``, ``onnx``, ``gguf``, ``keras``,
    ``hdf5``, ``msgpack``.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
        size = path.stat().st_size
    except OSError:
        head, size = b"", 0
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        got = _zip_kind(path)
        if got is not None or not name.endswith(WEIGHT_SUFFIXES):
            return got
    elif head.startswith(_LEGACY_TORCH):
        return "torch-legacy"
    elif head[:4] == b"GGUF":
        return "gguf"
    elif head[:8] == _HDF5:
        return "keras" if name.endswith((".weights.h5", ".keras")) else "hdf5"
    elif len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    for suffix, kind in _BY_NAME.items():
        if name.endswith(suffix):
            return kind
    if name.endswith(WEIGHT_SUFFIXES):
        return "torch"
    return None


def missing_package(kind: str) -> str | None:
    """The ``pip install`` name a format's reader needs and that is not installed, or None."""
    pkg = NEEDS.get(kind)
    return pkg if pkg and importlib.util.find_spec(pkg) is None else None


def read_weights(path: str | Path, kind: str | None = None):
    """One weight file of any recognised format → ``wdb.files.checkpoint.Loaded``."""
    from wdb.files.checkpoint import read_checkpoint

    path = Path(path)
    kind = kind or sniff(path) or "torch"
    if kind in CLASSIC:
        return read_checkpoint(path, kind)
    pkg = missing_package(kind)
    if pkg:
        raise NotStored(f"{kind} file; `pip install {pkg}` lets wdb read it")
    readers = {
        "onnx": read_onnx,
        "torchscript": read_torchscript,
        "gguf": read_gguf,
        "keras": read_keras,
        "msgpack": _read_flax,
    }
    if kind not in readers:
        why = {
            "hdf5": "an HDF5 file that is not a Keras 3 weights file (no 'layers' group)",
        }
        raise NotStored(why.get(kind, f"{kind} files are not read by wdb"))
    return readers[kind](path)


def _read_flax(path: Path):
    from wdb.files.flax import read_flax

    return read_flax(path)


def _loaded(arrays: dict, dtypes: dict, meta: dict | None = None):
    from wdb.files.checkpoint import Loaded, check_finite

    if not arrays:
        raise BadInput("no tensors in the file")
    for name, arr in arrays.items():
        check_finite(name, arr, dtypes[name])
    return Loaded(arrays, dtypes, meta or {})


_PLAIN = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


def read_onnx(path: Path):
    """An ONNX model's graph initializers (external data included), in graph order, dtypes kept."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - protobuf and file errors alike
        raise BadInput(f"corrupt ONNX file ({str(exc).splitlines()[0][:200]})") from None
    arrays, dtypes, skipped = {}, {}, []
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.BFLOAT16:
            arr = numpy_helper.to_array(init)
            arrays[init.name] = bf16_widen(np.asarray(arr))
            dtypes[init.name] = "bfloat16"
            continue
        arr = numpy_helper.to_array(init)
        if arr.dtype.name not in _PLAIN:
            skipped.append(init.name)
            continue
        arrays[init.name], dtypes[init.name] = np.ascontiguousarray(arr), arr.dtype.name
    meta = {"format": "onnx", "opset": [int(o.version) for o in model.opset_import]}
    if model.producer_name:
        meta["producer"] = model.producer_name
    if skipped:
        meta["not_stored"] = skipped
    return _loaded(arrays, dtypes, meta)


def read_torchscript(path: Path):
    """A TorchScript archive's parameters and buffers, read from its ``data.pkl`` by the
    restricted unpickler (the module classes become inert records; no code runs)."""
    from wdb.files.torch import read_script_tensors

    arrays, dtypes = read_script_tensors(path)
    return _loaded(arrays, dtypes, {"format": "torchscript"})


#: GGUF float tensor types stored as themselves (their numpy dtypes).
_GGUF_FLOATS = {"F32": "float32", "F16": "float16", "F64": "float64", "BF16": "bfloat16"}
_GGUF_INTS = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}


def read_gguf(path: Path):
    """A GGUF file's tensors: floats as themselves, quantized blocks as their raw bytes (uint8,
    bit-exact) with the GGUF type and logical shape of each in ``meta.gguf_types``."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"corrupt GGUF file ({str(exc).splitlines()[0][:200]})") from None
    arrays, dtypes, quant = {}, {}, {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest first
        data = np.asarray(t.data)
        if kind in _GGUF_FLOATS or kind in _GGUF_INTS:
            dtype = _GGUF_FLOATS.get(kind) or _GGUF_INTS[kind]
            if dtype == "bfloat16":
                arrays[t.name] = bf16_widen(data).reshape(shape)
            else:
                arrays[t.name] = np.ascontiguousarray(data.view(dtype).reshape(shape))
            dtypes[t.name] = dtype
        else:
            arrays[t.name] = np.ascontiguousarray(data.view(np.uint8).reshape(-1))
            dtypes[t.name] = "uint8"
            quant[t.name] = {"type": kind, "shape": list(shape)}
    meta = {"format": "gguf"}
    if quant:
        meta["gguf_types"] = quant
    return _loaded(arrays, dtypes, meta)


def read_keras(path: Path):
    """Keras 3 weights (``.weights.h5``, or the ``model.weights.h5`` inside a ``.keras``
    archive): every dataset under ``layers/`` by its path, in file order."""
    import io

    import h5py

    def walk(group, prefix: str, arrays: dict, dtypes: dict) -> None:
        for key in group:
            item = group[key]
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(item, h5py.Group):
                walk(item, name, arrays, dtypes)
                continue
            arr = item[()]
            if arr.dtype.name not in _PLAIN:
                raise BadInput(f"'{name}' has dtype {arr.dtype}, which wdb does not store")
            arrays[name], dtypes[name] = np.ascontiguousarray(arr), arr.dtype.name

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                fh = io.BytesIO(zf.read("model.weights.h5"))
        else:
            fh = path.open("rb")
        with fh, h5py.File(fh, "r") as h5:
            if "layers" not in h5:
                raise NotStored("an HDF5 file that is not a Keras 3 weights file (no 'layers')")
            arrays, dtypes = {}, {}
            walk(h5["layers"], "layers", arrays, dtypes)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py and zip errors alike
        raise BadInput(f"corrupt Keras/HDF5 file ({str(exc).splitlines()[0][:200]})") from None
    return _loaded(arrays, dtypes, {"format": "keras"})
