"""Modules the tests share: exact laws, reference models, stand-ins, statistics, paths."""
