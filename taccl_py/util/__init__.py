"""Shared utilities: sizes and units, safe file input/output, GC pauses."""
