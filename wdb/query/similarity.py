"""Error-set similarity engine: IoU and agreement of many models' error sets, bit-packed.

An error set is a boolean mask over the T items of an eval set (True = the model got it wrong).
METHODS.md's similarity of two models is ``|A∩B| / (|A∪B| + 1e-8)``; a model's novelty score
("maximum similarity") is its max IoU over a reference set, itself excluded.

Why bit-packing: 1,000 targets x 10,000 references x 10,000 items is 1e11 boolean pairs. Packed into
uint64 words (64 items per word) the intersection of two masks is ``popcount(a & b)`` summed over
``ceil(T/64)`` words, and the union needs no second pass: ``|A∪B| = |A| + |B| - |A∩B|``. Work is done
in blocks of ``BLOCK_WORDS`` words (a few MiB, cache-sized) so memory stays bounded whatever the
sizes. Every count is an exact integer and the IoU is computed with the same float64 formula as a
plain implementation, so results are bit-identical to it (tests check ``==``).

Agreement: for error masks, the fraction of items on which both models are right or both wrong
(``1 - popcount(a ^ b) / T``); for class predictions, the fraction of items with the same predicted
class (one bit plane per class, ``sum_c popcount(a_c & b_c) / T``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wdb.errors import BadInput

#: Words (uint64) per temporary block of a x b x W; 2^18 words = 2 MiB.
BLOCK_WORDS = 1 << 18
IOU_EPS = 1e-8

_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Bits set per uint64 word (numpy >= 2 has a native ufunc; else a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    b = words.view(np.uint8).reshape(*words.shape, 8)
    return _LUT[b].sum(-1, dtype=np.uint8)


def pack(masks: np.ndarray) -> np.ndarray:
    """Boolean ``[n, T]`` -> ``uint64 [n, ceil(T / 64)]`` (padding bits are 0)."""
    m = np.asarray(masks)
    if m.ndim != 2:
        raise BadInput(f"masks must be 2-D [n, T], got shape {list(m.shape)}")
    m = m.astype(bool, copy=False)
    n, t = m.shape
    words = max(1, (t + 63) // 64)
    packed = np.zeros((n, words * 8), dtype=np.uint8)
    if t:
        packed[:, : (t + 7) // 8] = np.packbits(m, axis=1, bitorder="little")
    return packed.view(np.uint64)


def counts(packed: np.ndarray) -> np.ndarray:
    """Set bits per row of a packed matrix (``|A|``), int64."""
    return _popcount(packed).sum(-1, dtype=np.int64)


def _blocks(n_a: int, n_b: int, words: int) -> tuple[int, int]:
    b = max(1, min(n_b, 512))
    a = max(1, min(n_a, BLOCK_WORDS // max(1, b * words)))
    if a == 1:
        b = max(1, min(n_b, BLOCK_WORDS // max(1, words)))
    return a, b


def _pair_blocks(
    pa: np.ndarray, pb: np.ndarray, op=np.bitwise_and
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(i0, j0, popcount(op(a, b)) [a, b] int64)`` over all blocks."""
    if pa.shape[1] != pb.shape[1]:
        raise BadInput(f"packed widths differ: {pa.shape[1]} vs {pb.shape[1]} words")
    a, b = _blocks(pa.shape[0], pb.shape[0], pa.shape[1])
    for i0 in range(0, pa.shape[0], a):
        blk_a = pa[i0 : i0 + a, None, :]
        for j0 in range(0, pb.shape[0], b):
            x = op(blk_a, pb[None, j0 : j0 + b, :])
            yield i0, j0, _popcount(x).sum(-1, dtype=np.int64)


def _iou(inter: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    union = ca[:, None] + cb[None, :] - inter
    return inter.astype(np.float64) / (union.astype(np.float64) + IOU_EPS)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise error-set IoU ``[n_a, n_b]`` (float64) of boolean masks ``[n, T]``."""
    pa, pb = pack(a), pack(b)
    ca, cb = counts(pa), counts(pb)
    out = np.empty((pa.shape[0], pb.shape[0]), dtype=np.float64)
    for i0, j0, inter in _pair_blocks(pa, pb):
        out[i0 : i0 + inter.shape[0], j0 : j0 + inter.shape[1]] = _iou(
            inter, ca[i0 : i0 + inter.shape[0]], cb[j0 : j0 + inter.shape[1]]
        )
    return out


def max_iou(
    targets: np.ndarray, reference: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per target: max IoU over the reference set and the (first) reference index attaining it.

    ``exclude[i]`` is a reference index to skip for target ``i`` (itself), or -1. A target with
    nothing left to compare gets ``nan`` and index -1. Memory is bounded by ``BLOCK_WORDS`` plus
    the packed inputs (T/8 bytes per model).
    """
    pa = targets if targets.dtype == np.uint64 else pack(targets)
    pb = reference if reference.dtype == np.uint64 else pack(reference)
    ca, cb = counts(pa), counts(pb)
    n_a = pa.shape[0]
    best = np.full(n_a, -np.inf)
    arg = np.full(n_a, -1, dtype=np.int64)
    ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    for i0, j0, inter in _pair_blocks(pa, pb):
        na, nb = inter.shape
        iou = _iou(inter, ca[i0 : i0 + na], cb[j0 : j0 + nb])
        if ex is not None:
            e = ex[i0 : i0 + na] - j0
            hit = (e >= 0) & (e < nb)
            iou[np.nonzero(hit)[0], e[hit]] = -np.inf
        j = iou.argmax(1)
        v = iou[np.arange(na), j]
        better = v > best[i0 : i0 + na]  # strict: keeps the first index on ties
        best[i0 : i0 + na][better] = v[better]
        arg[i0 : i0 + na][better] = j[better] + j0
    arg[~np.isfinite(best)] = -1
    best[~np.isfinite(best)] = np.nan
    return best, arg


def agreement_matrix(a: np.ndarray, b: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Pairwise agreement ``[n_a, n_b]``: of error masks (bool) or of class predictions (int)."""
    a, b = np.asarray(a), np.asarray(b)
    t = a.shape[1]
    if t == 0:
        raise BadInput("agreement over zero items is undefined")
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.int64)
    if a.dtype == bool and b.dtype == bool:
        for i0, j0, diff in _pair_blocks(pack(a), pack(b), np.bitwise_xor):
            out[i0 : i0 + diff.shape[0], j0 : j0 + diff.shape[1]] = t - diff
        return out / t
    n_classes = n_classes or int(max(a.max(initial=0), b.max(initial=0))) + 1
    for c in range(n_classes):
        for i0, j0, same in _pair_blocks(pack(a == c), pack(b == c)):
            out[i0 : i0 + same.shape[0], j0 : j0 + same.shape[1]] += same
    return out / t
