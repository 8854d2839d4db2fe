"""Weight-store bytes and read times: codecs and chunk shapes, measured in one run.

1. Bytes on disk vs raw parameter bytes (lossless round trip checked) for
   (a) independent runs: final weights of N separately initialised MLPs 64-32-10 trained on
       sklearn digits (trained vectorised, a few seconds), and
   (b) consecutive steps of one run: every training step of a few runs, rows of a run adjacent;
   for the store's codec (``wdb.store._compressor``) and alternatives.
2. Single-row and column-slice read times (and append-write time) for the store's chunk shape
   (``ROWS_PER_CHUNK`` x ``COLS_PER_CHUNK``) vs alternatives, on a wider space (D = 65,536).

    .venv/bin/python benchmarks/bench_store.py [--runs 512] [--steps 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from wdb import store


def train_zoo(n_runs: int, steps: int, snapshot_runs: int):
    """(final weights [n_runs, D], per-step weights [snapshot_runs * steps, D])."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:512] / 16.0, dtype=torch.float32)  # a subset: this is about bytes
    y = torch.tensor(y[:512])
    g = torch.Generator().manual_seed(0)
    w1 = (torch.randn(n_runs, 64, 32, generator=g) / 8).requires_grad_()
    b1 = torch.zeros(n_runs, 1, 32, requires_grad=True)
    w2 = (torch.randn(n_runs, 32, 10, generator=g) / 32**0.5).requires_grad_()
    b2 = torch.zeros(n_runs, 1, 10, requires_grad=True)
    params = [w1, b1, w2, b2]
    opt = torch.optim.Adam(params, lr=1e-2)
    flat = lambda: torch.cat([p.detach().reshape(n_runs, -1) for p in params], 1)  # noqa: E731
    snaps = []
    for _ in range(steps):
        h = torch.relu(torch.bmm(x.expand(n_runs, -1, -1), w1) + b1)
        logits = torch.bmm(h, w2) + b2
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.repeat(n_runs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        snaps.append(flat()[:snapshot_runs].clone())
    per_step = torch.stack(snaps, 1).reshape(snapshot_runs * steps, -1)  # run-major
    return flat().numpy(), per_step.numpy()


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def write_array(path: Path, data: np.ndarray, chunks, codec) -> float:
    if path.exists():
        shutil.rmtree(path)
    arr = zarr.create_array(
        str(path),
        shape=(0, data.shape[1]),
        chunks=chunks,
        dtype=data.dtype,
        compressors=codec,
        fill_value=0,
    )
    t = time.perf_counter()
    arr.resize(data.shape)
    arr[:] = data
    return time.perf_counter() - t


CODECS = {
    "store: " + "blosc zstd5 bitshuffle": lambda: store._compressor(np.dtype("float32")),
    "blosc lz4 bitshuffle": lambda: BloscCodec(
        cname="lz4", clevel=5, shuffle="bitshuffle", typesize=4
    ),
    "blosc zstd1 bitshuffle": lambda: BloscCodec(
        cname="zstd", clevel=1, shuffle="bitshuffle", typesize=4
    ),
    "zstd3 (no shuffle)": lambda: ZstdCodec(level=3),
}


def storage(tmp: Path, name: str, data: np.ndarray) -> None:
    raw = data.nbytes
    print(f"\n{name}: {data.shape[0]} rows x {data.shape[1]} params, raw {raw / 1e6:.2f} MB")
    for cname, codec in CODECS.items():
        chunks = (store.ROWS_PER_CHUNK, min(data.shape[1], store.COLS_PER_CHUNK))
        t = write_array(tmp / "a", data, chunks, codec())
        back = zarr.open_array(str(tmp / "a"))[:]
        exact = np.array_equal(back.view(np.uint32), data.view(np.uint32))
        print(
            f"  {cname:28s} {disk_bytes(tmp / 'a') / raw:6.3f}x raw   write {raw / t / 1e6:6.1f} MB/s"
            f"   lossless={exact}"
        )
    # XOR with the previous row of the same run (the STACK.md idea; not a zarr codec)
    x = data.view(np.uint32).copy()
    x[1:] ^= data.view(np.uint32)[:-1]
    write_array(
        tmp / "x",
        x,
        (store.ROWS_PER_CHUNK, min(x.shape[1], store.COLS_PER_CHUNK)),
        CODECS["store: blosc zstd5 bitshuffle"](),
    )
    print(f"  {'(xor prev row + store codec)':28s} {disk_bytes(tmp / 'x') / raw:6.3f}x raw")


def reads(tmp: Path, n_rows: int, width: int) -> None:
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(n_rows, width)) * 0.05).astype(np.float32)
    cols = slice(width - width // 16, width)  # "the last layers": 1/16 of the columns
    print(f"\nread times: {n_rows} rows x {width} params (random-normal weights)")
    base = None
    for rows, ccols in [
        (store.ROWS_PER_CHUNK, store.COLS_PER_CHUNK),
        (1, width),
        (8, 8192),
        (16, 4096),
        (128, 2048),
    ]:
        t_write = write_array(
            tmp / "r", data, (rows, min(width, ccols)), CODECS["store: blosc zstd5 bitshuffle"]()
        )
        arr = zarr.open_array(str(tmp / "r"))
        picks = rng.integers(0, n_rows, 50)
        t = time.perf_counter()
        for i in picks:
            arr[int(i)]
        t_row = (time.perf_counter() - t) / len(picks)
        t = time.perf_counter()
        sl = arr[:, cols]
        t_col = time.perf_counter() - t
        assert np.array_equal(sl, data[:, cols])
        label = f"{rows} x {min(width, ccols)}" + ("  (store)" if base is None else "")
        base = base or (t_row, t_col)
        print(
            f"  chunks {label:22s} row {t_row * 1e3:7.2f} ms ({t_row / base[0]:5.2f}x)   "
            f"col-slice {t_col * 1e3:7.1f} ms ({t_col / base[1]:5.2f}x)   "
            f"write {t_write:5.2f} s  files {sum(1 for _ in (tmp / 'r').rglob('c/*/*'))}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--read-rows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("WDB_PROGRESS", "0")
    t = time.perf_counter()
    final, per_step = train_zoo(args.runs, args.steps, snapshot_runs=8)
    print(
        f"trained {args.runs} MLPs 64-32-10 on digits for {args.steps} steps "
        f"in {time.perf_counter() - t:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        storage(tmp, "(a) independent runs (final weights)", final)
        storage(tmp, "(b) consecutive steps of one run (8 runs, rows of a run adjacent)", per_step)
        reads(tmp, args.read_rows, 65536)


if __name__ == "__main__":
    main()
