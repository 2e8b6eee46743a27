"""idcheck: a shared register of lost, stolen and revoked travel documents, served over gRPC."""

__version__ = "0.1.0"
