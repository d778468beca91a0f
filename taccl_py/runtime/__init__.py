"""Runtime: the data-level verifier and executors for plans."""
