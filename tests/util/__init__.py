"""Tests of mdlm_fast.util."""
