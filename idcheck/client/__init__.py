"""Command-line client for idcheck."""
