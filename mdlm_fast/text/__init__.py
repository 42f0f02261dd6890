"""Text: tokenizer loading and the corpus (reading, splitting, windows)."""
