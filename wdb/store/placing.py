"""Words to byte planes and back in one compiled pass: rotate, split / interleave, XOR in place.

Why: a wide chunk (``wdb.store.widechunk``) decodes to one byte plane per byte of its values;
numpy put them back with one strided byte copy per plane and then three whole-array passes to
rotate the words back (four more for a delta row: its key's planes XORed in). On a 4 MiB chunk of
float32 that took 2.4 ms of a plain chunk's 3.3 ms and 3.2 ms of a delta chunk's 8.5 ms, more than
zstd's decoding of the planes: the reading of a family's rows was bound by it. Here one loop
reads each plane byte once and writes each word once; the writer's split into planes
(``wdb.store.widechunk.row_planes``) likewise.

Only 2- and 4-byte values (bf16 / float16, float32: the checkpoints people keep) take the kernel;
other sizes, and processes without numba, keep numpy's way (:func:`usable` says which). The bits
are the same either way (tests/test_codec.py checks both against each other).
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency; loading it costs about 0.3 s, paid only by wide chunks
    import numba
except ImportError:  # pragma: no cover - the numpy path remains
    numba = None

#: tests set this False to take numpy's path
ENABLED = numba is not None

if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _place4(p0, p1, p2, p3, out, rotate, xor):  # pragma: no cover - compiled
        for i in range(out.size):
            w = (
                np.uint32(p0[i])
                | (np.uint32(p1[i]) << np.uint32(8))
                | (np.uint32(p2[i]) << np.uint32(16))
                | (np.uint32(p3[i]) << np.uint32(24))
            )
            if rotate:
                w = (w >> np.uint32(1)) | (w << np.uint32(31))
            out[i] = (out[i] ^ w) if xor else w

    @numba.njit(cache=True, nogil=True)
    def _place2(p0, p1, out, rotate, xor):  # pragma: no cover - compiled
        for i in range(out.size):
            w = np.uint16(p0[i]) | (np.uint16(p1[i]) << np.uint16(8))
            if rotate:
                w = np.uint16((w >> np.uint16(1)) | (w << np.uint16(15)))
            out[i] = (out[i] ^ w) if xor else w

    @numba.njit(cache=True, nogil=True)
    def _split4(words, planes, rotate):  # pragma: no cover - compiled
        for i in range(words.size):
            w = words[i]
            if rotate:
                w = (w << np.uint32(1)) | (w >> np.uint32(31))
            planes[0, i] = w & np.uint32(255)
            planes[1, i] = (w >> np.uint32(8)) & np.uint32(255)
            planes[2, i] = (w >> np.uint32(16)) & np.uint32(255)
            planes[3, i] = w >> np.uint32(24)

    @numba.njit(cache=True, nogil=True)
    def _split2(words, planes, rotate):  # pragma: no cover - compiled
        for i in range(words.size):
            w = words[i]
            if rotate:
                w = np.uint16((w << np.uint16(1)) | (w >> np.uint16(15)))
            planes[0, i] = w & np.uint16(255)
            planes[1, i] = w >> np.uint16(8)


def usable(itemsize: int) -> bool:
    """Whether values of ``itemsize`` bytes are placed by the compiled kernel."""
    return ENABLED and itemsize in (2, 4)


def place(planes: list[np.ndarray], words: np.ndarray, rotate: bool, xor: bool) -> None:
    """``words`` (unsigned, one per value) from their little-endian byte ``planes``, rotated
    right by one bit when ``rotate`` (undoing the codec's rotation of floats); with ``xor``,
    XORed into what ``words`` holds instead of replacing it. Requires :func:`usable`."""
    if words.itemsize == 4:
        _place4(planes[0], planes[1], planes[2], planes[3], words, rotate, xor)
    else:
        _place2(planes[0], planes[1], words, rotate, xor)


def split(words: np.ndarray, planes: np.ndarray, rotate: bool) -> None:
    """The inverse of :func:`place`: ``planes`` ``[itemsize, n]`` (uint8) of ``words``, each
    rotated left by one bit first when ``rotate``. Requires :func:`usable`."""
    (_split4 if words.itemsize == 4 else _split2)(words, planes, rotate)
