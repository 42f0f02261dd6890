"""Tests of mdlm_fast.analysis."""
