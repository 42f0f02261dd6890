"""Tests of mdlm_fast.serve."""
