"""taccl_py: synthesize, verify, lower and run collective-communication algorithms."""

__version__ = "0.1.0"
