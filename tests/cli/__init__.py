"""Tests of mdlm_fast.cli."""
