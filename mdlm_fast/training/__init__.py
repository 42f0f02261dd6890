"""Training: the MDLM and judge training loop, export with model cards, and BPE tokenizer training."""
