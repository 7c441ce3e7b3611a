"""Content-addressed image layer store (not built yet: see the project's issues)."""
