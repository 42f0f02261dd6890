"""Tests of mdlm_fast.schedules."""
