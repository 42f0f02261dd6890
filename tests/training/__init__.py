"""Tests of mdlm_fast.training."""
