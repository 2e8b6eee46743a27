"""Reading Arrow arrays' buffers directly, where a compute kernel's call costs more than the work (small arrays)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def utf8_offsets(values: pa.Array) -> np.ndarray:
    """The n + 1 int32 offsets of a utf8 (pa.string) array into its data buffer, a view (no copy) that honours a
    slice's offset: value i is the bytes [offsets[i], offsets[i + 1]) of `values.buffers()[2]`."""
    return np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)
