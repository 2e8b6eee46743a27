"""The allocator Arrow uses in idcheck's processes."""

from __future__ import annotations

import os

import pyarrow as pa


def use_system_allocator() -> str:
    """Make Arrow allocate with the C library's malloc, unless the operator chose a pool with Arrow's own setting
    (ARROW_DEFAULT_MEMORY_POOL: mimalloc, jemalloc or system); returns the backend now in use.

    Arrow's default pool in these wheels, mimalloc, kept much of what it had freed: a server seeded with
    1,000,000 records held 417 MiB instead of 272, and 10 s of uploads of 10,000 rows added 195 MiB instead of
    47 (`idcheck bench --records 1e6 --templates 0 --scenarios upload-10000`). A 10,000,000-row upload also ran
    faster with malloc: 261,663 and 270,424 rows/s against 217,938 and 228,696 (`bench/upload.py --rows
    10000000`, 2 cores), peak server RSS 3.1 instead of 3.3 GiB. Checks measured the same within run-to-run
    noise."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name
