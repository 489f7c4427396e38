"""Test fixtures shared across test directories as pytest plugins (see tests/conftest.py)."""
