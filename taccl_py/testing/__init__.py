"""Test doubles for code that needs hardware; see :mod:`taccl_py.testing.fake_cuda`."""
