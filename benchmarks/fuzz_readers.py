"""Fuzz the checkpoint readers: mutate real files of every format wdb accepts, read each one
in-process, and count what must never happen (not in CI: minutes at full size).

For each format a small real file (or folder) is written, then ``--cases`` mutants of it are
made with seeded random edits (bit flips, bytes set to edge values, truncation, insertion,
deletion, copied runs, and edits aimed at the format's header: the safetensors JSON header, the
zip central directory, the pickle, a manifest's header row). Each mutant is read by
``wdb.files.checkpoint.read_checkpoint`` (the folder reader for manifests) under a 10 s alarm,
and by the format's reference loader (``safetensors.torch.load_file``,
``torch.load(weights_only=True)``, ``numpy.load``) on the same bytes. Counted per format:

- ``traceback``: wdb raised something other than a ``WdbError`` (``BadInput``);
- ``hang``: wdb took longer than the alarm;
- ``differs``: wdb accepted, the reference accepted, and the tensors differ (names, dtypes,
  shapes or bits; bf16 is compared widened to float32, as wdb stores it);
- ``ref_refused``: wdb accepted a file the reference loader refuses.

The goal for each is 0. Informational columns: how many mutants wdb accepted and refused,
how many the reference accepted that wdb refused (wdb is stricter: CRC-32 of zip members,
NaN/Inf), and how many wdb accepted whose tensors differ from the *unmutated* file's (bytes
that no format checks, e.g. a flipped bit inside safetensors data: not detectable by a reader).

    python benchmarks/fuzz_readers.py                 # 10,000 cases per format
    python benchmarks/fuzz_readers.py --cases 500     # a quick look
    python benchmarks/fuzz_readers.py --formats pt_zip,safetensors --show 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wdb.errors import WdbError
from wdb.files.checkpoint import read_checkpoint

warnings.filterwarnings("ignore")


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in wdb swallows it."""


def _alarm(signum, frame):
    raise Hang()


# -- the unmutated files ------------------------------------------------------------------------


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(8, 16, generator=g),
        "fc.bias": torch.randn(8, generator=g),
        "emb": torch.randn(4, 6, generator=g).to(torch.bfloat16),
        "half": torch.randn(5, generator=g).half(),
        "steps": torch.arange(3, dtype=torch.int64),
    }


def make_files(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """format → (what is read, the files mutated)."""
    from safetensors.torch import save_file

    out: dict[str, tuple[Path, list[Path]]] = {}
    st = root / "st" / "model.safetensors"
    st.parent.mkdir()
    save_file(_state(1), str(st), metadata={"format": "pt"})
    out["safetensors"] = (st, [st])
    pz = root / "ptzip" / "model.pt"
    pz.parent.mkdir()
    torch.save(_state(2), pz)
    out["pt_zip"] = (pz, [pz])
    pl = root / "ptlegacy" / "model.pt"
    pl.parent.mkdir()
    torch.save(_state(3), pl, _use_new_zipfile_serialization=False)
    out["pt_legacy"] = (pl, [pl])
    nz = root / "npz" / "model.npz"
    nz.parent.mkdir()
    np.savez(nz, **{k: v.float().numpy() for k, v in _state(4).items()})
    out["npz"] = (nz, [nz])
    lc = root / "lightning" / "checkpoints" / "epoch=1-step=20.ckpt"
    lc.parent.mkdir(parents=True)
    model = _state(5)
    torch.save(
        {
            "epoch": 1,
            "global_step": 20,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": model,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
            "optimizer_states": [
                {"state": {0: {"step": torch.tensor(20.0), "exp_avg": torch.zeros(8)}}}
            ],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.01, "layers": [16, 8]},
        },
        lc,
    )
    out["lightning"] = (lc, [lc])
    hf = root / "hf"
    hf.mkdir()
    full = _state(6)
    names = list(full)
    parts = {
        "model-00001-of-00002.safetensors": names[:3],
        "model-00002-of-00002.safetensors": names[3:],
    }
    wmap = {}
    for file, keys in parts.items():
        save_file({k: full[k] for k in keys}, str(hf / file))
        wmap.update({k: file for k in keys})
    index = hf / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wmap}, indent=2))
    out["hf_sharded"] = (index, [index, *(hf / f for f in parts)])
    for kind in ("csv", "jsonl"):
        folder = root / f"manifest_{kind}"
        folder.mkdir()
        for i in range(3):
            torch.save(_state(10 + i), folder / f"ck{i}.pt")
        rows = [
            {"file": f"ck{i}.pt", "run": "r", "step": 10 * i, "loss": 1.0 / (i + 1)}
            for i in range(3)
        ]
        m = folder / f"manifest.{kind}"
        if kind == "csv":
            m.write_text(
                "file,run,step,loss\n"
                + "".join(f"{r['file']},{r['run']},{r['step']},{r['loss']}\n" for r in rows)
            )
        else:
            m.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[f"manifest_{kind}"] = (folder, [m])
    return out


# -- mutations ----------------------------------------------------------------------------------


def _focus(fmt: str, data: bytes, rng: random.Random) -> int:
    """An offset inside the part of the file that describes the rest."""
    n = len(data)
    if fmt in ("safetensors", "hf_sharded") and n > 8:
        hlen = int.from_bytes(data[:8], "little")
        if 0 < hlen < n:
            return rng.randrange(min(n, 8 + hlen))
    if data[:4] == b"PK\x03\x04":  # zip: the central directory and the pickle at the start
        cd = data.rfind(b"PK\x01\x02")
        return (
            rng.randrange(max(0, cd - 200), n)
            if rng.random() < 0.6 and cd > 0
            else rng.randrange(min(n, 400))
        )
    return rng.randrange(min(n, 300))


def _header_edit(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one number or quoted word of a text header (safetensors JSON, a manifest)."""
    import re

    n = len(data)
    end = n
    if n > 8 and 0 < int.from_bytes(data[:8], "little") < n:
        end = 8 + int.from_bytes(data[:8], "little")
    text = data[:end]
    spots = [m.span() for m in re.finditer(rb"-?\d+|\"[A-Za-z0-9_.]+\"", text)]
    if not spots:
        return data
    a, b = rng.choice(spots)
    new = rng.choice(
        [
            b"0",
            b"-1",
            b"1",
            b"4294967296",
            b"18446744073709551615",
            b"1e308",
            b"null",
            b"[]",
            b"{}",
            b'"F32"',
            b'"BF16"',
            b'"I64"',
            b'"X9"',
            b'"fc.bias"',
            b"99999999999",
        ]
    )
    out = data[:a] + new + data[b:]
    if end != n and rng.random() < 0.5:  # keep the header length field consistent
        out = (end - 8 + len(new) - (b - a)).to_bytes(8, "little") + out[8:]
    return out


def mutate(fmt: str, data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    n = len(b)
    op = rng.choice(
        ["flip", "flip", "byte", "trunc", "insert", "delete", "copy", "header", "multi"]
    )
    at = _focus(fmt, data, rng) if rng.random() < 0.5 else rng.randrange(n)
    if op == "flip":
        b[at] ^= 1 << rng.randrange(8)
    elif op == "byte":
        b[at] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
    elif op == "trunc":
        del b[rng.randrange(n) :]
    elif op == "insert":
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8, 64])))
    elif op == "delete":
        del b[at : at + rng.choice([1, 2, 4, 8, 64])]
    elif op == "copy":
        src = rng.randrange(n)
        k = rng.choice([4, 8, 32, 128])
        b[at : at + k] = data[src : src + k]
    elif op == "header":
        return _header_edit(data, rng)
    else:
        for _ in range(rng.randrange(2, 9)):
            j = _focus(fmt, data, rng) if rng.random() < 0.5 else rng.randrange(n)
            b[j] ^= 1 << rng.randrange(8)
    return bytes(b)


# -- reading ------------------------------------------------------------------------------------


def _np(t) -> tuple[str, np.ndarray]:
    if isinstance(t, np.ndarray):
        return str(t.dtype), t
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        return dtype, t.float().numpy()
    return dtype, t.numpy()


_OPTIONS = {"db": None, "zoo": "z", "kind": "training", "space": None, "strict": False}
_OPTIONS["layout"] = None


@functools.cache
def _folder_reader():
    from wdb.ingest.readers import reader

    return reader("folder")


@functools.cache
def _torch_file(path: Path) -> dict:
    return {k: _np(v) for k, v in torch.load(path, weights_only=True).items()}


def ours(fmt: str, target: Path) -> dict[str, tuple[str, np.ndarray]]:
    """What wdb reads: {name: (dtype name, values as stored)}."""
    if fmt.startswith("manifest"):  # the folder reader, as ``wdb ingest`` runs it
        from wdb.files.checkpoint import as_loaded
        from wdb.ingest.pipeline import scan

        got = {}
        for f in scan(_folder_reader(), "folder", target, _OPTIONS):
            if f.problem or f.companion:
                continue
            lo = as_loaded(f.load())
            for k, a in lo.arrays.items():
                got[f"{Path(f.source).name}|{f.run}|{f.step}|{k}"] = (lo.dtypes[k], np.asarray(a))
        return got
    lo = read_checkpoint(target)
    if lo.layout is not None and not lo.arrays:
        row = lo.materialise()
        arrays = lo.layout.unflatten(row)
        return {e.name: (e.dtype, np.asarray(arrays[e.name])) for e in lo.layout.entries}
    return {k: (lo.dtypes[k], np.asarray(a)) for k, a in lo.arrays.items()}


def reference(fmt: str, target: Path) -> dict[str, tuple[str, np.ndarray]] | None:
    """The format's own loader on the same bytes, or None where the comparison is by file
    (manifests: each listed file against ``torch.load``)."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return {k: _np(v) for k, v in load_file(str(target)).items()}
    if fmt in ("pt_zip", "pt_legacy", "lightning"):
        obj = torch.load(target, weights_only=True, map_location="cpu")
        if fmt == "lightning":
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError("not a state dict")
        return {k: _np(v) for k, v in obj.items()}
    if fmt == "npz":
        with np.load(target, allow_pickle=False) as z:
            return {k: (str(z[k].dtype), z[k]) for k in z.files}
    if fmt == "hf_sharded":
        from safetensors.torch import load_file

        wmap = json.loads(target.read_text())["weight_map"]
        got = {}
        for shard in dict.fromkeys(wmap.values()):
            got.update({k: _np(v) for k, v in load_file(str(target.parent / shard)).items()})
        if set(got) != set(wmap):
            raise ValueError("shards do not match the index")
        return got
    return None


def same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        (da, xa), (db, xb) = a[k], b[k]
        if da != db or xa.shape != xb.shape:
            return False
        if xa.dtype != xb.dtype:
            xb = xb.astype(xa.dtype)
        if xa.tobytes() != xb.tobytes():
            return False
    return True


def timed(fn: Callable, seconds: int):
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)


def run_format(
    fmt: str, target: Path, files: list[Path], cases: int, seed: int, alarm: int, show: int
) -> dict:
    originals = {p: p.read_bytes() for p in files}
    clean = ours(fmt, target)
    if fmt.startswith("manifest"):
        ref_clean = None
    else:
        ref_clean = reference(fmt, target)
        assert same(clean, ref_clean), f"{fmt}: wdb and the reference disagree on the clean file"
    rng = random.Random(f"{seed}-{fmt}")
    c: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for i in range(cases):
        victim = rng.choice(files)
        mutant = mutate(fmt, originals[victim], rng)
        for p in files:
            p.write_bytes(mutant if p == victim else originals[p])
        got = err = None
        try:
            got = timed(lambda: ours(fmt, target), alarm)
            c["accepted"] += 1
        except Hang:
            c["hang"] += 1
            err = "hang"
        except WdbError:
            c["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point: anything but WdbError counts
            c["traceback"] += 1
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            err = f"{type(exc).__name__}: {str(exc)[:120]} at {Path(tb.filename).name}:{tb.lineno}"
            examples.setdefault("traceback", []).append(f"case {i} ({victim.name}): {err}")
        ref = ref_err = None
        if not fmt.startswith("manifest"):
            try:
                ref = timed(lambda: reference(fmt, target), alarm)
            except Hang:
                ref_err = "hang"
                c["ref_hang"] += 1
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                ref_err = type(exc).__name__
        if got is not None:
            if fmt.startswith("manifest"):
                for key, (dt, arr) in got.items():
                    name = key.split("|")[0]
                    want = _torch_file(target / name)
                    k = key.split("|")[-1]
                    if k not in want or not same({k: (dt, arr)}, {k: want[k]}):
                        c["differs"] += 1
                        examples.setdefault("differs", []).append(f"case {i}: {key}")
                        break
            elif ref is not None:
                if not same(got, ref):
                    c["differs"] += 1
                    examples.setdefault("differs", []).append(f"case {i} ({victim.name})")
            else:
                c["ref_refused"] += 1
                examples.setdefault("ref_refused", []).append(
                    f"case {i} ({victim.name}): reference {ref_err}"
                )
            if ref_clean is not None and not same(got, ref_clean):
                c["changed_undetectable"] += 1
        elif ref is not None and err is None:
            c["stricter"] += 1
    for p in files:
        p.write_bytes(originals[p])
    for kind, lines in examples.items():
        for ln in lines[:show]:
            print(f"  {fmt} {kind}: {ln}", file=sys.stderr)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="mutants per format (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", help="comma-separated subset of the formats")
    ap.add_argument("--alarm", type=int, default=10, help="seconds before a read counts as a hang")
    ap.add_argument("--show", type=int, default=3, help="examples printed per kind of failure")
    ap.add_argument("--memory-gb", type=float, default=16, help="address-space limit (0: none)")
    args = ap.parse_args()
    if args.memory_gb:
        lim = int(args.memory_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    root = Path(tempfile.mkdtemp(prefix="wdb-fuzz-"))
    try:
        formats = make_files(root)
        todo = args.formats.split(",") if args.formats else list(formats)
        cols = [
            "cases",
            "traceback",
            "hang",
            "differs",
            "ref_refused",
            "accepted",
            "refused",
            "stricter",
            "changed_undetectable",
            "ref_hang",
            "seconds",
        ]
        rows = []
        for fmt in todo:
            target, files = formats[fmt]
            t0 = time.perf_counter()
            c = run_format(fmt, target, files, args.cases, args.seed, args.alarm, args.show)
            c["cases"], c["seconds"] = args.cases, round(time.perf_counter() - t0, 1)
            rows.append((fmt, c))
            print(f"{fmt}: {dict(c)}", file=sys.stderr, flush=True)
        print(f"{'format':<16}" + "".join(f"{k:>22}" for k in cols))
        for fmt, c in rows:
            print(f"{fmt:<16}" + "".join(f"{c.get(k, 0):>22}" for k in cols))
        bad = sum(
            c.get(k, 0) for _, c in rows for k in ("traceback", "hang", "differs", "ref_refused")
        )
        print(f"goal counts (traceback + hang + differs + ref_refused): {bad}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
