"""Sampling: the ``sample()`` entry, the run state, MDLM's sampler, the fast sampler and confidence decoding."""
