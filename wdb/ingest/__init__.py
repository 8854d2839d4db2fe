"""Ingest: turn checkpoint folders into rows (readers are plugins; the built-ins live in the
top-level ``ingest`` package)."""
