"""One big checkpoint file: peak memory and time of ingest and export (issues 24 and 25).

Writes one ``.safetensors`` file of P parameters (default 2^30, a 1B-parameter model: 2 GB in
bf16) as tensors of 8192 x 4096, then, each in a fresh process with the page cache warm:

- ``wdb ingest`` of the folder into a new store (peak RSS: target <= 1.5 GB, whatever the size;
  throughput against ``zstd -3 -T0`` compressing the same file, a C tool doing less work);
- ``wdb export`` of it back to safetensors (peak RSS, same target), checked tensor by tensor
  against the file (names, dtypes and bytes; read through ``safe_open`` one tensor at a time).

Peak RSS is the process's own ``ru_maxrss`` (``bench_memory.measure``).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bigfile.py [--params 1073741824]
        [--dtype bf16|fp32] [--dir /tmp/wdb_bench_bigfile] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_memory import measure

ROWS, COLS = 8192, 4096


def make(path: Path, params: int, dtype: str) -> int:
    """``params`` values (rounded up to whole 8192 x 4096 tensors) of N(0, 0.02) in ``dtype``;
    returns how many were written."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    kind = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    n = -(-params // (ROWS * COLS))
    state = {
        f"layers.{i}.weight": (torch.randn(ROWS, COLS, generator=g) * 0.02).to(kind)
        for i in range(n)
    }
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    return n * ROWS * COLS


def digests(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (dtype, sha256 of the bytes), one tensor in memory at a time."""
    import torch
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(name)
            raw = t.contiguous().view(-1).view(torch.uint8).numpy()
            out[name] = (str(t.dtype), hashlib.sha256(raw).hexdigest())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1 << 30)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--dir", default="/tmp/wdb_bench_bigfile")
    ap.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    args = ap.parse_args()
    root = Path(args.dir)
    if root.exists():
        shutil.rmtree(root)
    wdb = str(Path(sys.executable).with_name("wdb"))
    env = dict(os.environ, WDB_PROGRESS="0")
    src = root / "zoo" / "big" / "model.safetensors"
    try:
        params = make(src, args.params, args.dtype)
        size = src.stat().st_size
        src.read_bytes()  # page cache warm for everyone
        t = time.perf_counter()
        subprocess.run(["zstd", "-3", "-T0", "-q", "-f", str(src), "-o", str(root / "z.zst")])
        zstd_s = time.perf_counter() - t
        ingest_s, ingest_mb = measure(
            [wdb, "--db", str(root / "db"), "ingest", str(root / "zoo")], env
        )
        out = root / "back.safetensors"
        export = [wdb, "--db", str(root / "db"), "export", "big", "--format", "safetensors"]
        export_s, export_mb = measure([*export, "--out", str(out)], env)
        same = digests(out) == digests(src)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    gb = size / 1e9
    print(f"one {args.dtype} safetensors file: {params:,} params, {gb:.2f} GB")
    print(f"  ingest  {ingest_s:6.1f} s  peak RSS {ingest_mb:6.0f} MB (target <= 1536)")
    print(f"  export  {export_s:6.1f} s  peak RSS {export_mb:6.0f} MB (target <= 1536)")
    print(f"  exported tensors equal the file's: {same}")
    ratio = zstd_s / ingest_s  # throughputs over the same bytes
    print(f"  ingest {size / 1e6 / ingest_s:.0f} MB/s, zstd -3 -T0 {size / 1e6 / zstd_s:.0f} MB/s")
    print(f"  ingest / zstd throughput: {ratio:.2f}x (target >= 0.7)")


if __name__ == "__main__":
    main()
