"""The allocator Arrow uses in idcheck's processes.

`idcheck/__init__.py` sets ARROW_DEFAULT_MEMORY_POOL to `system` (the C library's malloc) unless the operator has
set it (mimalloc, jemalloc or system), before Arrow is loaded: Arrow reads it once, when it creates its default
pool, and `pyarrow.set_memory_pool()` later reaches only part of the allocations.

Arrow's default pool in these wheels, mimalloc, kept much of what it had freed. A server seeded with 1,000,000
records held 417 MiB instead of 272, and 10 s of uploads of 10,000 rows added 195 MiB to it instead of 47
(`idcheck bench --records 1e6 --templates 0 --scenarios upload-10000`, 2 cores). A 10,000,000-row upload ran
faster with malloc: 261,663 and 270,424 rows/s against 217,938 and 228,696, peak server RSS 3.1 instead of
3.3 GiB (`bench/upload.py --rows 10000000`). Checks measured the same within run-to-run noise.
"""

from __future__ import annotations

import pyarrow as pa


def arrow_allocator() -> str:
    """The backend of Arrow's default memory pool in this process: system, mimalloc or jemalloc."""
    return pa.default_memory_pool().backend_name
