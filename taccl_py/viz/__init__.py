"""Plots of plans and topologies."""
