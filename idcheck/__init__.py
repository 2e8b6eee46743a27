"""idcheck: a shared register of lost, stolen and revoked travel documents, served over gRPC."""

import os

# Arrow's allocator is read from this variable once, when Arrow is first loaded: every idcheck process (server,
# worker, mirror, command line) loads idcheck before Arrow, so the C library's malloc is the default here, and an
# operator's own setting is kept. Why: idcheck.memory.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

# gRPC reads its experiments from this variable once, when grpc is imported: the servers accept and serve
# connections on gRPC's classic polling engine instead of the EventEngine listener (on by default for Python since
# grpcio 1.80; gRPC documents this setting as the way to turn it off), which saves thread hand-offs on every call.
# An operator's own setting is kept. Why and what it measured: idcheck.server.app.GRPC_EXPERIMENTS.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

__version__ = "0.1.0"
