"""Certificates of the federation: CA, server and member certificates for mutual TLS (no gRPC here)."""
