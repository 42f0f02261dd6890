"""Tests of mdlm_fast.sampling."""
