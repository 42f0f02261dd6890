"""Small utilities shared by the library and the CLI: atomic writes, strict JSON, argument validation."""
