"""The package version (pyproject.toml states the same number; tests/test_layout.py checks they agree)."""
__version__ = "0.1.0"
