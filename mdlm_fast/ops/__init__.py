"""The operators: typed wrappers of the compiled kernels, their pure-PyTorch oracle, and the draw from logits."""
