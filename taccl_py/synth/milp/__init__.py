"""The staged MILP method (TACCL): routing, ordering, scheduling, multi-node decomposition."""
