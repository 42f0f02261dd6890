"""The denoisers: MDLM's DiT, the Denoiser wrapper, compute dtypes, and checkpoints loaded without running their code."""
