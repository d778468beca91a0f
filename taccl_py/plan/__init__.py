"""The MSCCL plan: model, step semantics, runtime limits, XML, the verifier."""
