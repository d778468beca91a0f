"""Analysis of plans: lower bounds, the α-β simulator with protocols, NCCL's model, reports."""
