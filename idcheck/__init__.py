"""idcheck: a shared register of lost, stolen and revoked travel documents, served over gRPC."""

import os

# Arrow's allocator is read from this variable once, when Arrow is first loaded: every idcheck process (server,
# worker, mirror, command line) loads idcheck before Arrow, so the C library's malloc is the default here, and an
# operator's own setting is kept. Why: idcheck.memory.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
