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
its tile, itself a multiple of ``GROUP``). It is exact to float64 rounding, like the oracle:
float32 values subtract exactly in float64 and only squares and sums round.

Rows of other dtypes (float16) and processes without numba use the numpy path
(``wdb.query.scan._accumulate``), which sums on the same kind of grid.
"""

from __future__ import annotations

import numpy as np

#: columns of one group sum (and of the grid column blocks start on)
GROUP = 256
#: columns of the queries kept in cache while the block's rows are summed against them
TILE = 4096
#: row dtypes the kernel takes (others go through numpy)
KINDS = (np.dtype(np.float32), np.dtype(np.float64))

_kernel = None


def _compile():
    import numba

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, inline="never")
    def group(r, q, a, b):  # pragma: no cover - compiled
        s = 0.0
        for x in range(a, b):
            d = np.float64(r[x]) - np.float64(q[x])
            s += d * d
        return s

    @numba.njit(cache=True, nogil=True)
    def accumulate(R, Q, acc):  # pragma: no cover - compiled
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
                        total += group(r, q, g0, min(t1, g0 + GROUP))
                    acc[j, i] = total

    return accumulate


def kernel():
    """The compiled kernel, or None where numba is not installed (compiled on first use and
    cached on disk by numba)."""
    global _kernel
    if _kernel is None:
        try:
            _kernel = _compile()
        except ImportError:
            _kernel = False
    return _kernel or None


def compiled() -> bool:
    """Whether the kernel is available in this process (numba installed)."""
    return kernel() is not None


def usable(R: np.ndarray, Q: np.ndarray) -> bool:
    """Whether the kernel sums these blocks (float32 / float64 rows, numba installed)."""
    return R.dtype in KINDS and Q.dtype in KINDS and compiled()


def accumulate(R: np.ndarray, Q: np.ndarray, acc: np.ndarray) -> None:
    """``acc[j, i] += sum((R[i] - Q[j])**2)`` in float64 over the block's columns, on the
    ``GROUP`` grid (the block's first column is on it)."""
    if R.shape[0] and Q.shape[0] and R.shape[1]:
        kernel()(R, Q, acc)
