"""Reading Arrow arrays' buffers directly, where a compute kernel's call costs more than the work (small arrays)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def utf8_offsets(values: pa.Array) -> np.ndarray:
    """The n + 1 int32 offsets of a utf8 (pa.string) array into its data buffer, a view (no copy) that honours a
    slice's offset: value i is the bytes [offsets[i], offsets[i + 1]) of `values.buffers()[2]`."""
    return np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)


def same_length_ascii(values: pa.Array) -> np.ndarray | None:
    """The bytes of a utf8 (pa.string) array without nulls whose values are all ASCII and of one length, as an
    (n, length) uint8 matrix read out of its buffers (a view, no copy); None otherwise, or for an empty array.
    Document numbers of one format (a manifest, an upload of one issuer) and a column of one value mostly are."""
    n = len(values)
    if not n or values.type != pa.string() or values.null_count:
        return None
    offsets = utf8_offsets(values)
    first, length = int(offsets[0]), int(offsets[1] - offsets[0])
    if int(offsets[-1]) - first != n * length or not (np.diff(offsets) == length).all():
        return None
    if not length:
        return np.zeros((n, 0), np.uint8)
    chars = np.frombuffer(values.buffers()[2], np.uint8, n * length, first).reshape(n, length)
    return chars if int(chars.max()) < 0x80 else None  # multi-byte characters: not ASCII
