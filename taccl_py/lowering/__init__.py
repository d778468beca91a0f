"""Lowering: algorithm IR -> MSCCL XML plan, and MSCCL XML -> plan (parser)."""
