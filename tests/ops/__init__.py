"""Tests of mdlm_fast.ops."""
