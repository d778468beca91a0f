"""Synthesis: baselines, lower bounds and the staged MILP synthesizer, all emitting the IR."""
