"""The constants Python uses are the extension's, and the extension's are what the headers say.

mdlm_fast/ops/compiled.py reads them from ``_C.constants()``; this test reads the headers as text, so
a stale build or a Python copy that drifted from csrc fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mdlm_fast._build import compiled_constants
from mdlm_fast.ops import compiled
from tests.helpers.paths import REPO_ROOT

CSRC = REPO_ROOT / "csrc"


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def constants_from_headers(csrc: Path = CSRC) -> dict:
    """The constants as written in the C++ headers."""
    philox = (csrc / "include" / "mdlm_fast" / "philox.h").read_text()
    enum = re.search(r"enum Purpose[^{]*\{(.*?)\};", philox, re.S).group(1)
    purposes = {_camel_to_snake(name): int(value) for name, value in re.findall(r"kPurpose(\w+)\s*=\s*(\d+)", enum)}
    shift = re.search(r"kMaxStep = \(int64_t\{1\} << (\d+)\) - 1;", philox).group(1)
    chunk = re.search(
        r"constexpr int64_t kVocabChunk = (\d+);", (csrc / "include" / "mdlm_fast" / "categorical.h").read_text()
    ).group(1)
    checks = (csrc / "checks.h").read_text()
    names = re.search(r"kNoiseDistNames\[\] = \{([^}]*)\}", checks).group(1)
    return {
        "purposes": purposes,
        "max_step": (1 << int(shift)) - 1,
        "vocab_chunk": int(chunk),
        "min_temperature": float(re.search(r"kMinTemperature = ([^;]+);", checks).group(1)),
        "max_temperature": float(re.search(r"kMaxTemperature = ([^;]+);", checks).group(1)),
        "noise_dists": tuple(re.findall(r'"(\w+)"', names)),
    }


def test_the_extension_carries_the_headers_constants():
    expected = constants_from_headers()
    assert set(expected["purposes"]) == {"user", "reveal", "token", "reference_gumbel", "noise_removal"}
    assert compiled_constants() == expected


def test_python_reads_the_extensions_constants():
    built = compiled_constants()
    assert compiled.PURPOSES == built["purposes"]
    assert (
        compiled.PURPOSE_REVEAL,
        compiled.PURPOSE_TOKEN,
        compiled.PURPOSE_REFERENCE_GUMBEL,
        compiled.PURPOSE_NOISE_REMOVAL,
    ) == tuple(built["purposes"][k] for k in ("reveal", "token", "reference_gumbel", "noise_removal"))
    assert compiled.VOCAB_CHUNK == built["vocab_chunk"]
    assert (compiled.MIN_TEMPERATURE, compiled.MAX_TEMPERATURE) == (built["min_temperature"], built["max_temperature"])
    assert compiled.NOISE_DISTS == built["noise_dists"]


def test_a_header_that_drifts_is_seen(tmp_path):
    """The header reader is no tautology: a changed purpose id in a copy of csrc reads differently."""
    copy = tmp_path / "csrc"
    (copy / "include" / "mdlm_fast").mkdir(parents=True)
    for rel in ("checks.h", "include/mdlm_fast/philox.h", "include/mdlm_fast/categorical.h"):
        (copy / rel).write_text((CSRC / rel).read_text())
    philox = copy / "include" / "mdlm_fast" / "philox.h"
    philox.write_text(philox.read_text().replace("kPurposeNoiseRemoval = 4", "kPurposeNoiseRemoval = 5"))
    drifted = constants_from_headers(copy)
    assert drifted["purposes"]["noise_removal"] == 5
    assert drifted != compiled_constants()


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 1.0])
def test_the_temperature_rule_uses_the_bounds(temperature):
    assert compiled.check_temperature(temperature) == temperature
    with pytest.raises(ValueError, match="temperature"):
        compiled.check_temperature(compiled.MIN_TEMPERATURE / 2)
