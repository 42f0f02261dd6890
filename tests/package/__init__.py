"""Tests of the whole package: layout, install, dependencies, first use, documented rules, scripts."""
