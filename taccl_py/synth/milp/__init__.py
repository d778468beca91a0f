"""The staged MILP method (TACCL): routing, ordering, scheduling, decomposition for multi-node clusters."""
