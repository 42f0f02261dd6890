"""Tests of mdlm_fast.models."""
