"""The store's codec, ``wdb.rowdelta``: lossless on every bit pattern, and it earns its keep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec

from wdb.store import codec
from wdb.store.codec import RowDeltaCodec

DTYPES = ["float32", "float16", "float64", "int8", "int32", "int64", "uint8", "uint16", "bool"]
SPECIAL = {  # bit patterns a float codec must not normalise
    "float32": [0x80000000, 0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF],
    "float16": [0x8000, 0x7E01, 0xFD55, 0x7C00, 0xFC00, 0x0001, 0x83FF],
    "float64": [1 << 63, 0x7FF8000000000001, 0xFFF0000000000000, 1, 0x800FFFFFFFFFFFFF],
}


@st.composite
def chunks(draw):
    """A chunk of random bits, often with rows that are small steps from the row above (so
    that the delta modes are taken) and with NaN payloads, -0.0, infinities and denormals."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.integers(0, 2, (rows, cols)).astype(bool)
    bits = rng.integers(0, 256, rows * cols * dtype.itemsize, dtype=np.uint8)
    x = bits.view(dtype).reshape(rows, cols).copy()
    kind = draw(st.sampled_from(["random", "steps", "momentum", "frozen", "two runs"]))
    if kind != "random" and dtype.kind == "f":
        base = rng.normal(size=cols).astype(dtype)
        walk = np.cumsum(rng.normal(size=(rows, cols)) * 1e-3, axis=0)
        if kind == "momentum":
            walk = np.cumsum(walk, axis=0)
        x = (base + walk).astype(dtype)
    elif kind != "random":
        x = np.cumsum(rng.integers(-3, 4, (rows, cols)), axis=0).astype(dtype)
    if kind == "frozen":  # columns no step changes (frozen layers, dead units)
        frozen = rng.random(cols) < 0.4
        x[:, frozen] = x[0, frozen]
    if kind == "two runs" and rows > 2:  # a second run starts mid-chunk: a raw row among deltas
        x[rows // 2 :] = x[rows // 2 :][:, ::-1]
    if dtype.name in SPECIAL and draw(st.booleans()):
        u = x.view(f"u{dtype.itemsize}").reshape(-1)
        picks = rng.integers(0, u.size, min(u.size, len(SPECIAL[dtype.name])))
        u[picks] = np.array(SPECIAL[dtype.name][: picks.size], dtype=u.dtype)
    return x


@settings(max_examples=300, deadline=None)
@given(chunks(), st.sampled_from([1, 3]))
def test_encode_decode_is_bit_exact(x, level):
    blob = codec.encode(x.tobytes(), x.shape, x.dtype, level)
    back = codec.decode(blob, x.shape, x.dtype)
    assert back.tobytes() == x.tobytes()


def test_one_dimensional_and_empty_chunks_round_trip():
    for x in [np.arange(7, dtype=np.float32), np.zeros((0, 5), dtype=np.float32)]:
        back = codec.decode(codec.encode(x.tobytes(), x.shape, x.dtype, 1), x.shape, x.dtype)
        assert back.tobytes() == x.tobytes()


def test_wide_chunks_are_built_a_slice_at_a_time_and_round_trip():
    """A wide space's one-row chunk (over SCRATCH_MAX_BYTES) takes the sliced plane builder;
    its slices must join up exactly, for floats (rotated) and integers, odd lengths included."""
    rng = np.random.default_rng(5)
    n = codec.SCRATCH_MAX_BYTES // 4 * 3 + 11  # 1.5 slices' worth of float32, plus a ragged end
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45], dtype=np.float32)
    floats = (rng.normal(size=n) * 0.02).astype(np.float32)
    floats[:5] = special
    ints = rng.integers(-300, 300, size=2 * n, dtype=np.int16)  # small: a high plane to squeeze
    for x in (floats[None, :], ints[None, :]):
        blob = codec.encode(x.tobytes(), x.shape, x.dtype, 1)
        assert len(blob) < x.nbytes
        assert codec.decode(blob, x.shape, x.dtype).tobytes() == x.tobytes()


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "uint8", "float64"])
def test_a_residual_chunk_decodes_with_its_key_straight_into_the_row(dtype, compiled, monkeypatch):
    """``widechunk.decode_row_chunk``: values, and residual XOR key, placed straight into a
    slice of a row, equal the long way (decode, then XOR) on every bit pattern, for chunks
    over and under the wide coder's size; placed by the compiled kernel and by numpy; and a
    residual XORed onto the key's values already in the row (``onto``)."""
    from wdb.store import placing, widechunk

    monkeypatch.setattr(placing, "ENABLED", compiled and placing.ENABLED)

    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    u = np.dtype(f"u{dt.itemsize}")
    for n in (1000, codec.SCRATCH_MAX_BYTES // dt.itemsize + 7):
        key = rng.integers(0, 2 ** (8 * dt.itemsize), n, dtype=u, endpoint=False)
        key[: len(SPECIAL.get(dtype, []))] = SPECIAL.get(dtype, [])
        resid = np.zeros(n, dtype=u)
        resid[::97] = 1  # a near-empty residual, as a frozen layer's
        kb = codec.encode(key.view(dt).tobytes(), (1, n), dt, 1)
        rb = codec.encode(resid.view(dt).tobytes(), (1, n), dt, 1)
        row = np.full(n + 10, 7, dtype=dt)
        widechunk.decode_row_chunk(kb, row[5:-5])
        assert row[5:-5].view(u).tobytes() == key.tobytes()
        widechunk.decode_row_chunk(rb, row[5:-5], kb)
        assert row[5:-5].view(u).tobytes() == (key ^ resid).tobytes()
        assert row[:5].view(u).tolist() == np.full(5, 7, dtype=dt).view(u).tolist()
        row[5:-5] = key.view(dt)  # a kept key chunk's values: the residual XORed onto them
        widechunk.decode_row_chunk(rb, row[5:-5], onto=True)
        assert row[5:-5].view(u).tobytes() == (key ^ resid).tobytes()
        assert row[-5:].view(u).tolist() == np.full(5, 7, dtype=dt).view(u).tolist()
    with pytest.raises(ValueError):  # a damaged chunk says so, as decode does
        widechunk.decode_row_chunk(kb[: len(kb) // 2], np.empty(n, dtype=dt))


def _modes(blob: bytes, rows: int) -> list[int]:
    return list(blob[2 : 2 + rows])


def test_related_rows_are_deltas_and_unrelated_rows_are_not():
    rng = np.random.default_rng(0)
    base = (rng.normal(size=4096) * 0.05).astype(np.float32)
    drift = np.cumsum(rng.normal(size=(8, 4096)) * 1e-5, axis=0)
    steps = (base + drift).astype(np.float32)
    independent = (rng.normal(size=(8, 4096)) * 0.05).astype(np.float32)
    step_blob = codec.encode(steps.tobytes(), steps.shape, steps.dtype, 1)
    indep_blob = codec.encode(independent.tobytes(), independent.shape, independent.dtype, 1)
    assert _modes(step_blob, 8)[0] == codec.RAW
    assert all(m != codec.RAW for m in _modes(step_blob, 8)[1:])
    assert _modes(indep_blob, 8) == [codec.RAW] * 8
    # and the deltas pay: consecutive steps take well under the bytes of independent rows
    assert len(step_blob) < 0.75 * len(indep_blob)


def test_momentum_rows_use_the_second_difference():
    rng = np.random.default_rng(1)
    base, velocity = rng.normal(size=4096), rng.normal(size=4096) * 1e-3
    rows = np.stack([base + k * velocity for k in range(6)]).astype(np.float32)
    modes = _modes(codec.encode(rows.tobytes(), rows.shape, rows.dtype, 1), 6)
    assert modes == [codec.RAW] + [codec.DELTA2] * 5  # one mode for the run of related rows


def test_accelerating_rows_use_the_third_difference():
    rng = np.random.default_rng(5)
    base, velocity, accel = rng.normal(size=(3, 4096)) * [[1], [1e-3], [1e-4]]
    rows = np.stack([base + k * velocity + k * k * accel for k in range(8)]).astype(np.float32)
    blob = codec.encode(rows.tobytes(), rows.shape, rows.dtype, 1)
    assert _modes(blob, 8) == [codec.RAW] + [codec.DELTA3] * 7
    assert codec.decode(blob, rows.shape, rows.dtype).tobytes() == rows.tobytes()


def test_residual_rows_are_coded_column_by_column():
    """Steps where a fifth of the columns never move (a frozen layer) and a few weights cross
    zero (a large jump in integer order): coded column by column, a weight's residuals sit
    together, and the chunk is clearly smaller than in row order (version 1's layout)."""
    rng = np.random.default_rng(6)
    base = rng.normal(size=4096) * 0.05
    steps = base + np.cumsum(rng.normal(size=(16, 4096)) * 1e-4, axis=0)
    frozen = rng.random(4096) < 0.2
    steps[:, frozen] = base[frozen]
    crossing = rng.choice(4096, 40, replace=False)
    steps[8:, crossing] *= -1
    rows = steps.astype(np.float32)
    blob = codec.encode(rows.tobytes(), rows.shape, rows.dtype, 1)
    assert codec.decode(blob, rows.shape, rows.dtype).tobytes() == rows.tobytes()
    assert len(blob) < 0.95 * len(_as_version1(rows))


def _as_version1(rows: np.ndarray) -> bytes:
    """The planes of ``rows`` after their row modes, in row order and one set for all rows, as
    version 1 laid them out."""
    from numcodecs.zstd import Zstd

    u = rows.view(np.uint32)
    words = np.empty_like(u)
    codec._rotate(u.reshape(-1), True, out=words.reshape(-1), tmp=np.empty(u.size, np.uint32))
    codec._row_modes(u, words, "f")
    planes = words.view(np.uint8).reshape(-1, 4)
    return b"".join(Zstd(1).encode(np.ascontiguousarray(planes[:, p])) for p in range(4))


def test_version_1_chunks_still_decode():
    """A chunk written by version 1 of the codec (one set of planes in row order, no third
    difference; kept in tests/data) reads back bit for bit."""
    data = Path(__file__).parent / "data"
    want = np.load(data / "rowdelta_v1_rows.npy")
    blob = (data / "rowdelta_v1.bin").read_bytes()
    assert blob[0] == 1 and _modes(blob, 8) == [0, 1, 1, 1, 1, 2, 0, 0]
    assert codec.decode(blob, want.shape, want.dtype).tobytes() == want.tobytes()


def test_bf16_values_stored_as_float32_compress_below_their_own_size():
    """The store keeps bf16 checkpoints as float32 rows; the zero low bytes must cost nothing."""
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(32, 4096)) * 0.05).astype(np.float32)
    x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    blob = codec.encode(x.tobytes(), x.shape, x.dtype, 1)
    assert len(blob) < 0.75 * x.size * 2  # under three quarters of the bf16 bytes


def test_damaged_and_foreign_chunks_fail_with_a_reason():
    x = np.ones((4, 64), dtype=np.float32)
    blob = bytearray(codec.encode(x.tobytes(), x.shape, x.dtype, 1))
    with pytest.raises(ValueError, match="version"):
        codec.decode(bytes([99]) + bytes(blob[1:]), x.shape, x.dtype)
    with pytest.raises(ValueError, match="2-byte values read as float32|4-byte"):
        codec.decode(blob, x.shape, np.dtype("float16"))
    bad_mode = bytearray(blob)
    bad_mode[2 + 1] = 7  # row 1's mode byte: no such mode
    with pytest.raises(ValueError, match="row modes"):
        codec.decode(bytes(bad_mode), x.shape, x.dtype)
    blob[-3:] = b"\xff\xff\xff"
    with pytest.raises(ValueError, match="byte plane"):
        codec.decode(bytes(blob), x.shape, x.dtype)


@pytest.mark.parametrize("dtype", ["float32", "int16", "V3"])
def test_every_truncated_chunk_fails_with_a_reason(dtype):
    """A chunk cut short anywhere (a torn write, a damaged file) is a ValueError naming the
    codec, never a struct or index error from deep inside or a silently short array."""
    rng = np.random.default_rng(8)
    x = np.cumsum(rng.integers(-3, 4, (6, 40)), axis=0).astype("int16")
    if dtype == "float32":
        x = (rng.normal(size=40) + np.cumsum(rng.normal(size=(6, 40)) * 1e-3, 0)).astype(dtype)
    elif dtype == "V3":
        x = rng.integers(0, 4, (6, 40 * 3), dtype=np.uint8).view("V3")
    blob = codec.encode(x.tobytes(), x.shape, x.dtype, 1)
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match=codec.NAME):
            codec.decode(blob[:cut], x.shape, x.dtype)


def test_zarr_alone_reads_the_arrays(tmp_path):
    """The codec is registered under zarr's entry point: a program that never imports wdb
    reads the store (as long as the package is installed)."""
    rng = np.random.default_rng(3)
    data = (np.cumsum(rng.normal(size=(40, 300)) * 1e-3, axis=0) + 1).astype(np.float32)
    arr = zarr.create_array(
        str(tmp_path / "a"),
        shape=data.shape,
        chunks=(32, 128),
        dtype="float32",
        compressors=RowDeltaCodec(level=1),
        fill_value=0,
    )
    arr[:] = data
    np.save(tmp_path / "want.npy", data)
    script = (
        "import sys, numpy as np, zarr; "
        "assert 'wdb' not in sys.modules; "
        f"a = zarr.open_array({str(tmp_path / 'a')!r}); "
        f"assert np.array_equal(a[:].view(np.uint32), "
        f"np.load({str(tmp_path / 'want.npy')!r}).view(np.uint32)); print(a.compressors)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "RowDeltaCodec" in out.stdout


def test_codec_config_round_trips_and_refuses_bad_levels():
    c = RowDeltaCodec(level=3)
    assert RowDeltaCodec.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="level"):
        RowDeltaCodec(level=99)


def test_new_arrays_get_the_codec_and_old_ones_stay_readable(tmp_path):
    from wdb.store.arrays import ArrayStore

    store = ArrayStore(tmp_path / "s.zarr")
    new = store.create("spaces/1", 100, "float32")
    assert isinstance(new.compressors[0], RowDeltaCodec)
    old = store.group.create_array(
        "spaces/2",
        shape=(0, 100),
        chunks=(32, 100),
        dtype="float32",
        compressors=BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=4),
        fill_value=0,
    )
    rows = np.random.default_rng(4).normal(size=(5, 100)).astype(np.float32)
    store.write("spaces/2", 0, rows)
    assert np.array_equal(ArrayStore(tmp_path / "s.zarr").read("spaces/2", [4, 0]), rows[[4, 0]])
    assert isinstance(old.compressors[0], BloscCodec)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "uint16"])
def test_row_planes_compiled_equal_numpy(dtype, monkeypatch):
    """The writer's split of a wide chunk into byte planes (``widechunk.row_planes``): the
    compiled pass and numpy's give the same planes, and they decode back to the values."""
    from wdb.store import placing, widechunk

    rng = np.random.default_rng(5)
    dt = np.dtype(dtype)
    u = rng.integers(0, 2 ** (8 * dt.itemsize), 70_001, dtype=f"u{dt.itemsize}")
    kind = "f" if dt.kind == "f" else "i"
    got = widechunk.row_planes(u, kind)
    monkeypatch.setattr(placing, "ENABLED", False)
    assert got.tobytes() == widechunk.row_planes(u, kind).tobytes()
    blob = codec.encode(u.view(dt).tobytes(), (1, u.size), dt, 1)
    assert codec.decode(blob, (1, u.size), dt).view(u.dtype).tobytes() == u.tobytes()
