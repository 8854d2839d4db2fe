"""Weight-store bytes and read times: codecs and chunk shapes, measured in one run.

1. Bytes on disk vs raw parameter bytes (lossless round trip checked), per case:
   (a) independent runs: final weights of N separately initialised MLPs 64-32-10 trained on
       sklearn digits (trained vectorised, a few seconds);
   (b) consecutive steps of one run: every Adam step (lr 1e-2) of a few of those runs, rows of a
       run adjacent;
   (c) P-diff's BN-only steps: the ``mnist-bn`` task's zoo (``size="small"``, 300 BN-only AdamW
       steps of bn1/bn2, 512 params), trained here and read back through ``wdb ingest``;
   (d) a bf16 model: the (a) weights cast to bfloat16, stored as the store stores a bf16 space
       (its 2-byte bit patterns, ``uint16``; ``wdb.store.tensors``); raw is 2 bytes a parameter;
   for the store's codec before issue 14 (Blosc zstd1 bitshuffle), ``wdb.rowdelta`` (the store's
   codec now, ``wdb.store.codec``), plain zstd, and ``zipnn`` over the same chunks if it is installed.
2. Single-row and column-slice read times and append time: old codec vs new on the store's chunk
   shape, then the store's chunk shape vs alternatives, on a wider space (D = 65,536).

    .venv/bin/python benchmarks/bench_store.py [--runs 512] [--steps 32] [--bn-steps 300]
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

from wdb.store import arrays as store


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
        shape=(0, *data.shape[1:]),
        chunks=chunks,
        dtype=data.dtype,
        compressors=codec,
        fill_value=0,
    )
    t = time.perf_counter()
    arr.resize(data.shape)
    arr[:] = data
    return time.perf_counter() - t


def blosc_before(dtype: np.dtype) -> BloscCodec:
    """The store's codec before issue 14, which old databases still hold."""
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=dtype.itemsize)


CODECS = {
    "before: blosc zstd1 bitshuffle": blosc_before,
    "store: wdb.rowdelta": store._compressor,
    "zstd3 (no shuffle)": lambda dt: ZstdCodec(level=3),
}


def zipnn_bytes(data: np.ndarray, chunks: tuple[int, int], bf16: bool) -> tuple[int, bool] | None:
    """zipnn's bytes over the same chunks (bf16 rows compressed as bf16), or None if absent."""
    try:
        from zipnn import ZipNN
    except ImportError:
        return None
    zn = ZipNN(bytearray_dtype="bfloat16" if bf16 else "float32", threads=1)
    total, exact = 0, True
    for i in range(0, data.shape[0], chunks[0]):
        for j in range(0, data.shape[1], chunks[1]):
            block = np.ascontiguousarray(data[i : i + chunks[0], j : j + chunks[1]])
            raw = block  # bf16 rows are their bits already (uint16)
            packed = zn.compress(raw.tobytes())
            total += len(packed)
            exact &= bytes(zn.decompress(packed)) == raw.tobytes()
    return total, exact


def storage(tmp: Path, name: str, data: np.ndarray, bf16: bool = False) -> dict[str, float]:
    """Print and return bytes on disk / raw bytes per codec (raw: the checkpoints' own bytes;
    bf16 rows are given as their bits)."""
    raw = data.nbytes
    print(f"\n{name}: {data.shape[0]} rows x {data.shape[1]} params, raw {raw / 1e6:.2f} MB")
    chunks = (store.ROWS_PER_CHUNK, min(data.shape[1], store.COLS_PER_CHUNK))
    out = {}
    for cname, codec in CODECS.items():
        t = write_array(tmp / "a", data, chunks, codec(data.dtype))
        back = zarr.open_array(str(tmp / "a"))[:]
        exact = np.array_equal(back.view(np.uint8), data.view(np.uint8))
        out[cname] = disk_bytes(tmp / "a") / raw
        print(
            f"  {cname:32s} {out[cname]:6.3f}x raw   write {data.nbytes / t / 1e6:6.1f} MB/s"
            f"   lossless={exact}"
        )
    z = zipnn_bytes(data, chunks, bf16)
    if z is None:
        print(f"  {'zipnn':32s} (not installed: pip install zipnn)")
    else:
        out["zipnn"] = z[0] / raw
        print(f"  {'zipnn (same chunks)':32s} {out['zipnn']:6.3f}x raw   lossless={z[1]}")
    return out


def pdiff_rows(tmp: Path, steps: int) -> np.ndarray:
    """The BN-only rows of the mnist-bn zoo, in step order, as ``wdb ingest`` stores them."""
    import wdb
    from wdb.study.tasks.mnist_bn import MnistBN

    zoo = MnistBN().train_zoo(tmp / "bn-zoo", runs=steps, size="small")
    db = wdb.open(tmp / "bn-db")
    db.ingest(zoo)
    ids = [
        r["id"]
        for r in db.sql(
            "SELECT c.id FROM checkpoints c JOIN runs r ON r.id = c.run_id "
            "WHERE r.name LIKE '%-bn' ORDER BY c.step"
        )
    ]
    return db.weights(ids)


def time_reads(path: Path, data: np.ndarray, cols: slice, picks: np.ndarray) -> tuple[float, float]:
    """Median single-row read and best-of-5 column-slice read (this machine is noisy: a
    median and a minimum say more about the codec than a mean does)."""
    arr = zarr.open_array(str(path))
    rows = []
    for i in picks:
        t = time.perf_counter()
        arr[int(i)]
        rows.append(time.perf_counter() - t)
    cuts = []
    for _ in range(5):
        t = time.perf_counter()
        sl = arr[:, cols]
        cuts.append(time.perf_counter() - t)
    assert np.array_equal(sl, data[:, cols])
    return float(np.median(rows)), min(cuts)


def time_appends(path: Path, data: np.ndarray, codec) -> float:
    """Seconds per appended row, one row at a time (how ``write_stream`` and small ingests go)."""
    write_array(path, data[:0], (store.ROWS_PER_CHUNK, store.COLS_PER_CHUNK), codec)
    arr = zarr.open_array(str(path), mode="a")
    n = min(64, data.shape[0])
    t = time.perf_counter()
    for i in range(n):
        arr.resize((i + 1, data.shape[1]))
        arr[i] = data[i]
    return (time.perf_counter() - t) / n


def reads(tmp: Path, n_rows: int, width: int, steps: np.ndarray) -> None:
    """Read and append times, old codec vs new, on synthetic rows of a wide space and on case
    (b)'s Adam steps (``steps``: residual rows in column order, the third predictor)."""
    rng = np.random.default_rng(0)
    independent = (rng.normal(size=(n_rows, width)) * 0.05).astype(np.float32)
    # rows drifting like consecutive steps: every row but a chunk's first is a delta to rebuild
    walk = np.cumsum(independent * 0.01, axis=0, dtype=np.float32) + independent[0]
    shape = (store.ROWS_PER_CHUNK, store.COLS_PER_CHUNK)
    picks = rng.integers(0, n_rows, 50)
    for label, data in [
        ("independent rows", independent),
        ("random-walk rows", walk),
        ("case (b)'s Adam steps", steps),
    ]:
        cols = slice(data.shape[1] - data.shape[1] // 16, None)  # "the last layers": 1/16
        print(f"\nread times: {len(data)} x {data.shape[1]} params, {label}, codec before vs now")
        base = None
        for cname, codec in CODECS.items():
            if cname.startswith("zstd"):
                continue
            write_array(tmp / "r", data, shape, codec(data.dtype))
            t_row, t_col = time_reads(tmp / "r", data, cols, picks % len(data))
            t_app = time_appends(tmp / "w", data, codec(data.dtype))
            base = base or (t_row, t_col, t_app)
            print(
                f"  {cname:32s} row {t_row * 1e3:6.2f} ms ({t_row / base[0]:4.2f}x, target <= 2x)"
                f"  col-slice {t_col * 1e3:6.1f} ms ({t_col / base[1]:4.2f}x, target <= 2x)  "
                f"append {t_app * 1e3:5.1f} ms/row ({t_app / base[2]:4.2f}x)"
            )
    data, cols = walk, slice(width - width // 16, None)
    print(f"\nchunk shapes, store codec: {n_rows} rows x {width} params")
    base = None
    for rows, ccols in [
        (store.ROWS_PER_CHUNK, store.COLS_PER_CHUNK),
        (1, width),
        (8, 8192),
        (16, 4096),
        (128, 2048),
    ]:
        t_write = write_array(
            tmp / "r", data, (rows, min(width, ccols)), store._compressor(data.dtype)
        )
        t_row, t_col = time_reads(tmp / "r", data, cols, picks)
        label = f"{rows} x {min(width, ccols)}" + ("  (store)" if base is None else "")
        base = base or (t_row, t_col)
        print(
            f"  chunks {label:22s} row {t_row * 1e3:7.2f} ms ({t_row / base[0]:5.2f}x)   "
            f"col-slice {t_col * 1e3:7.1f} ms ({t_col / base[1]:5.2f}x)   "
            f"write {t_write:5.2f} s  files {sum(1 for _ in (tmp / 'r').rglob('c/*/*'))}"
        )


TARGETS = {  # issue 14: the new codec's bytes vs raw, per case
    "(a)": 0.85,
    "(b)": 0.55,
    "(c)": 0.55,
    "(d)": 0.70,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--bn-steps", type=int, default=300, help="P-diff case (0: skip it)")
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
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["(a)"] = storage(tmp, "(a) independent runs (final weights)", final)
        results["(b)"] = storage(
            tmp, "(b) consecutive steps of one run (8 runs, rows of a run adjacent)", per_step
        )
        if args.bn_steps:
            t = time.perf_counter()
            bn = pdiff_rows(tmp, args.bn_steps)
            print(f"\n(trained the mnist-bn zoo in {time.perf_counter() - t:.1f} s)")
            results["(c)"] = storage(tmp, "(c) P-diff's BN-only steps (mnist-bn, one run)", bn)
        bf16 = torch.from_numpy(final).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        results["(d)"] = storage(
            tmp, "(d) bf16 model (the (a) weights in bfloat16)", bf16, bf16=True
        )
        reads(tmp, args.read_rows, 65536, per_step)
    print("\nissue 14 targets (wdb.rowdelta bytes vs raw):")
    for case, target in TARGETS.items():
        if case in results:
            got = results[case]["store: wdb.rowdelta"]
            verdict = "met" if got <= target else "NOT met"
            print(f"  {case} {got:.3f}x raw, target <= {target:.2f}x: {verdict}")


if __name__ == "__main__":
    main()
