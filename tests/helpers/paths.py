"""The repository's root, for tests that read its files (scripts, sources, configuration).

Stated once here, so a test file that moves to another folder keeps finding it.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
