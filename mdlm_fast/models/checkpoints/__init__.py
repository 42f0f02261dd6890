"""Checkpoint formats, one module each, behind mdlm_fast.models.checkpoint."""
