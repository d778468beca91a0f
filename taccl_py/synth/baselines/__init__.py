"""NCCL's algorithms as baselines: multi-channel rings, double binary trees, direct p2p."""
