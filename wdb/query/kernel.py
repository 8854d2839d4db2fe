"""The scan's arithmetic: squared L2 sums of reference rows against query rows, in one pass.

Why a compiled kernel: summed with numpy, each query costs one float64 pass over every reference
value (cast, subtract, grouped sum: several temporaries per tile), so novelty of 6 targets cost
8x one nearest query and a nearest query spent as long summing as reading (issue 25). Here each
reference value is loaded once for all the queries of a pass: the queries' values of a column
tile stay in cache while every reference row of the block is summed against them, and nothing
is copied or cast to float64 in memory.

Same numbers whatever the plan: each row's differences are summed in float64 in ``GROUP``-column
groups on a grid fixed from the row's first column; within a group the compiler may vectorize
the sum (the only reassociation allowed), the group sums are added to the total strictly left to
right. So a reference's distance does not depend on how rows or columns were batched or split
between workers (column blocks start on the grid: ``wdb.query.scan`` cuts them at multiples of
its tile, itself a multiple of ``GROUP``). The order inside a group is the compiled code's, so
machines with other vector widths (a Dask cluster of unlike hosts) may differ in the last bit. It is exact to float64 rounding, like the oracle:
float32 values subtract exactly in float64 and only squares and sums round.

Small scans (below ``wdb.query.scan.FAST_MIN`` value-query pairs: loading the kernel costs
about a second in a fresh process), rows of other dtypes (float16) and processes without numba
use the numpy path (``wdb.query.scan._accumulate``), which sums on the same kind of grid; the
plan decides once per scan, so every worker of a scan sums alike.
"""

from __future__ import annotations

import numpy as np

#: columns of one group sum (and of the grid column blocks start on)
GROUP = 256
#: columns of the queries kept in cache while the block's rows are summed against them
TILE = 4096
#: row dtypes the kernel takes (others go through numpy)
KINDS = (np.dtype(np.float32), np.dtype(np.float64))

try:  # imported with this module (scan imports it lazily): about 0.3 s
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the numpy path remains
    numba = None

if numba is not None:

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, inline="never")
    def _group(r, q, a, b):  # pragma: no cover - compiled
        # over slices from 0: indexed from ``a`` the loop compiled to code 5x slower (0.85 vs
        # 4.2 G value pairs/s on 16k float32 values in cache), though it was vectorized too
        rr, qq = r[a:b], q[a:b]
        s = 0.0
        for x in range(rr.size):
            d = np.float64(rr[x]) - np.float64(qq[x])
            s += d * d
        return s

    @numba.njit(cache=True, nogil=True)
    def _accumulate(R, Q, acc):  # pragma: no cover - compiled
        m, c = R.shape
        t = Q.shape[0]
        for t0 in range(0, c, TILE):
            t1 = min(c, t0 + TILE)
            for i in range(m):
                r = R[i]
                for j in range(t):
                    q = Q[j]
                    total = acc[j, i]
                    for g0 in range(t0, t1, GROUP):
                        total += _group(r, q, g0, min(t1, g0 + GROUP))
                    acc[j, i] = total


#: the compiled kernel, or False (tests set it False to take the numpy path)
_kernel = _accumulate if numba is not None else False


def kernel():
    """The compiled kernel (compiled on first use, then cached on disk by numba), or None."""
    return _kernel or None


def usable(R: np.ndarray, Q: np.ndarray) -> bool:
    """Whether the kernel sums these blocks (float32 / float64 rows, numba installed)."""
    return R.dtype in KINDS and Q.dtype in KINDS and kernel() is not None


def accumulate(R: np.ndarray, Q: np.ndarray, acc: np.ndarray) -> None:
    """``acc[j, i] += sum((R[i] - Q[j])**2)`` in float64 over the block's columns, on the
    ``GROUP`` grid (the block's first column is on it)."""
    if R.shape[0] and Q.shape[0] and R.shape[1]:
        # contiguous blocks only (a view of rows in memory is copied: the plan counts that
        # copy): the compiled code for strided rows sums a group in another order, and a
        # distance must have the same bits whatever the plan
        kernel()(np.ascontiguousarray(R), np.ascontiguousarray(Q), acc)
