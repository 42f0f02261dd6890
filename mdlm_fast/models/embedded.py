"""Where the embedded default (models, judge, tokenizer, text samples) lives inside the package."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
