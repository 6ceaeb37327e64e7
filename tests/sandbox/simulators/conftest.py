"""The simulator fixtures live in tests/conftest.py, shared with the worker tests."""
