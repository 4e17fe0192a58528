"""Ingest edges: things that put a session's audio onto the bus."""
