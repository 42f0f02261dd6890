"""ModelSchedule: constructors, placement/rounding rules, the text spec parser, and the noise schedule."""

import math
import pickle
from decimal import ROUND_FLOOR, Decimal

import pytest
import torch

pytest.importorskip("hypothesis", reason="property tests need hypothesis: pip install -e .[test]")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mdlm_fast.schedules.model_schedule import (
    MAX_STEPS,
    PLACEMENTS,
    ModelSchedule,
    ScheduleError,
    all_segment_choices,
    light_step_count,
    segment_bounds,
)
from mdlm_fast.schedules.noise import LogLinearNoise, sampling_dt, sampling_timesteps

FAST = settings(max_examples=200, deadline=None)

schedules = st.lists(st.integers(0, 3), min_size=1, max_size=60).map(ModelSchedule)
fractions = st.one_of(st.floats(0.0, 1.0, allow_nan=False), st.sampled_from([0.0, 0.1, 0.25, 0.35, 0.5, 0.75, 1.0]))


def expected_light(steps, fraction):
    """floor(f*T + 1/2) on the decimal the float prints as, computed independently with Decimal."""
    exact = Decimal(repr(float(fraction))) * steps + Decimal("0.5")
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


def light_mask(schedule):
    return [i != 0 for i in schedule]


def runs_of_light(schedule):
    """(start, end) of each maximal block of light steps."""
    return [(s, s + n) for s, (k, n) in zip(_starts(schedule), schedule.runs()) if k != 0]


def _starts(schedule):
    start = 0
    for _, n in schedule.runs():
        yield start
        start += n


# ---------------------------------------------------------------------------------- basic object


def test_basic_protocol_and_summaries():
    s = ModelSchedule([1, 1, 0, 0, 0, 2])
    assert s.indices == (1, 1, 0, 0, 0, 2) and isinstance(s.indices, tuple)
    assert len(s) == s.steps == 6 and s[0] == 1 and s[-1] == 2 and list(s) == list(s.indices)
    assert s.n_models == 3 and s.counts() == (3, 2, 1)
    assert s.light_fraction == pytest.approx(0.5)
    assert s.to_spec() == "L2-H3-M2x1" and str(s) == s.to_spec()
    assert eval(repr(s), {"ModelSchedule": ModelSchedule}) == s
    assert s == ModelSchedule((1, 1, 0, 0, 0, 2)) and s != ModelSchedule([0] * 6)
    assert hash(s) == hash(ModelSchedule.from_list(iter([1, 1, 0, 0, 0, 2])))
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(AttributeError):
        s.indices = (0,)


@pytest.mark.parametrize("bad, needle", [([], "empty"), ([0, -1], "-1"), ([0, 1.5], "1.5"), ("L3", "parse")])
def test_constructor_rejects(bad, needle):
    with pytest.raises(ScheduleError, match=needle.replace(".", r"\.")):
        ModelSchedule(bad)


def test_simple_constructors():
    assert ModelSchedule.all_heavy(4).indices == (0, 0, 0, 0)
    assert ModelSchedule.all_light(3).indices == (1, 1, 1)
    assert ModelSchedule.all_model(2, 3).counts() == (0, 0, 0, 2)
    assert ModelSchedule.all_heavy(5).light_fraction == 0.0
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ScheduleError, match=str(bad)):
            ModelSchedule.all_heavy(bad)


def test_validate_for_and_coerce():
    s = ModelSchedule.parse("H2-M2x2")
    assert s.validate_for(3) is s
    with pytest.raises(ScheduleError, match=r"model index 2.*only 2 model"):
        s.validate_for(2)
    with pytest.raises(ScheduleError, match=r"4 steps.*steps=5"):
        s.validate_for(3, steps=5)
    assert ModelSchedule.coerce(None, 3) == ModelSchedule.all_heavy(3)
    assert ModelSchedule.coerce("first:0.5", 4) == ModelSchedule([1, 1, 0, 0])
    assert ModelSchedule.coerce([0, 1]) == ModelSchedule([0, 1])
    assert ModelSchedule.coerce(s) is s
    with pytest.raises(ScheduleError, match="steps=3"):
        ModelSchedule.coerce([0, 1], steps=3)


# ------------------------------------------------------------------------ fractions and placement


@pytest.mark.parametrize(
    "steps, fraction, n",
    [
        (10, 0.35, 4),
        (4, 0.125, 1),
        (2, 0.25, 1),
        (10, 0.25, 3),
        (10, 0.45, 5),
        (1000, 0.25, 250),
        (3, 0.5, 2),
        (7, 0.0, 0),
        (7, 1.0, 7),
        (10, "25%", 3),
    ],
)
def test_light_step_count_rounds_half_up(steps, fraction, n):
    # (10, 0.25) -> 2.5 -> 3 and (2, 0.25) -> 0.5 -> 1: round-half-to-even would give 2 and 0.
    assert light_step_count(steps, fraction) == n


@FAST
@given(steps=st.integers(1, 300), fraction=fractions, placement=st.sampled_from(PLACEMENTS))
def test_fraction_gives_exact_light_count(steps, fraction, placement):
    s = ModelSchedule.from_fraction(steps, fraction, placement=placement)
    n = expected_light(steps, fraction)
    assert s.steps == steps and sum(light_mask(s)) == n
    blocks = runs_of_light(s)
    if placement == "first" and n:
        assert blocks == [(0, n)]
    if placement == "last" and n:
        assert blocks == [(steps - n, steps)]
    if placement in ("middle", "q1", "q2", "q3", "q4"):
        assert len(blocks) == (1 if n else 0)  # one contiguous block
    # sandwich: exact layout checked in test_sandwich_is_symmetric


@FAST
@given(steps=st.integers(1, 300), fraction=fractions)
def test_sandwich_is_symmetric(steps, fraction):
    s = ModelSchedule.from_fraction(steps, fraction)  # sandwich is the default placement
    n = expected_light(steps, fraction)
    head, tail = (n + 1) // 2, n // 2  # an odd extra step goes at the start
    assert s.indices == (1,) * head + (0,) * (steps - n) + (1,) * tail
    if n % 2 == 0:
        assert tuple(reversed(s.indices)) == s.indices


@FAST
@given(steps=st.integers(1, 300), quarter=st.integers(1, 4), fraction=fractions)
def test_quarter_block_is_centered_on_its_quarter(steps, quarter, fraction):
    s = ModelSchedule.from_fraction(steps, fraction, placement=f"q{quarter}")
    q_start, q_end = segment_bounds(steps, 4)[quarter - 1] if steps >= 4 else (None, None)
    n = sum(light_mask(s))
    if n and q_start is not None and n <= q_end - q_start:
        ((start, end),) = runs_of_light(s)
        assert q_start <= start and end <= q_end
        assert abs((start - q_start) - (q_end - end)) <= 1


@pytest.mark.parametrize("quarter", [1, 2, 3, 4])
def test_quarter_at_25_percent_is_exactly_the_quarter(quarter):
    s = ModelSchedule.from_fraction(1000, 0.25, placement=f"q{quarter}")
    assert runs_of_light(s) == [((quarter - 1) * 250, quarter * 250)]


def test_placement_examples():
    lf = ModelSchedule.from_fraction
    assert lf(16, 0.25, "sandwich").to_spec() == "L2-H12-L2"
    assert lf(10, 0.3, "sandwich").to_spec() == "L2-H7-L1"
    assert lf(16, 0.25, "middle").to_spec() == "H6-L4-H6"
    assert lf(16, 0.25, "q2").to_spec() == "H4-L4-H8"
    assert lf(16, 0.5, "q1").to_spec() == "L8-H8"  # larger than the quarter: extends, clamped at 0
    assert lf(16, 0.5, "q2").to_spec() == "H2-L8-H6"  # extends on both sides of [4, 8)
    assert ModelSchedule.from_fraction(8, 0.25, "last", light=2).to_spec() == "H6-M2x2"


@pytest.mark.parametrize("bad, needle", [(1.5, "1.5"), (-0.1, "-0.1"), (float("nan"), "nan"), ("x", "x")])
def test_fraction_errors_quote_value(bad, needle):
    with pytest.raises(ScheduleError, match=needle):
        ModelSchedule.from_fraction(10, bad)


def test_unknown_placement_lists_valid_ones():
    with pytest.raises(ScheduleError, match=r"'edges'.*first, last, q1, q2, q3, q4, sandwich, middle"):
        ModelSchedule.from_fraction(10, 0.2, placement="edges")


# ------------------------------------------------------------------------------------- segments


@FAST
@given(steps=st.integers(1, 400), n_segments=st.integers(1, 40))
def test_segment_bounds_cover_and_balance(steps, n_segments):
    if n_segments > steps:
        with pytest.raises(ScheduleError, match=str(n_segments)):
            segment_bounds(steps, n_segments)
        return
    bounds = segment_bounds(steps, n_segments)
    sizes = [e - s for s, e in bounds]
    assert bounds[0][0] == 0 and bounds[-1][1] == steps
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # larger first


@FAST
@given(steps=st.integers(10, 400), chosen=st.sets(st.integers(0, 9), max_size=10))
def test_segments_schedule(steps, chosen):
    s = ModelSchedule.segments(steps, sorted(chosen))
    bounds = segment_bounds(steps, 10)
    for k, (start, end) in enumerate(bounds):
        assert set(s.indices[start:end]) == ({1} if k in chosen else {0})
    spec = "segments:" + ",".join(map(str, sorted(chosen)))
    assert ModelSchedule.parse(spec, steps) == s


def test_segment_examples_and_errors():
    assert ModelSchedule.segments(10, [0, 9]).to_spec() == "L1-H8-L1"
    assert ModelSchedule.segments(10, [3], n_segments=4).to_spec() == "H8-L2"
    assert ModelSchedule.parse("segments/4:0,3", 10).to_spec() == "L3-H5-L2"
    with pytest.raises(ScheduleError, match="duplicate segment index 8"):
        ModelSchedule.segments(100, [0, 8, 8])
    with pytest.raises(ScheduleError, match="segment index 10 out of range"):
        ModelSchedule.segments(100, [10])


def test_all_segment_choices():
    choices = all_segment_choices()
    assert len(choices) == 210 == math.comb(10, 4)
    assert choices == sorted(choices) and len(set(choices)) == 210
    assert choices[0] == (0, 1, 2, 3) and choices[-1] == (6, 7, 8, 9)
    assert ModelSchedule.all_segment_choices(5, 2) == all_segment_choices(5, 2)
    # Every choice gives a schedule with exactly 40% light steps at T = 1000.
    assert {ModelSchedule.segments(1000, c).counts() for c in choices} == {(600, 400)}


# ------------------------------------------------------------------------------ predicted saving


def test_predicted_saving():
    s = ModelSchedule.from_fraction(1000, 0.25)
    assert s.predicted_saving([12, 4]) == pytest.approx(1 / 6)
    assert ModelSchedule.all_heavy(10).predicted_saving([12, 4]) == 0.0
    three = ModelSchedule([0, 1, 2, 2])  # (0 + 2/3 + 5/6 + 5/6) / 4
    assert three.predicted_saving([12, 4, 2]) == pytest.approx((2 / 3 + 5 / 3) / 4)
    with pytest.raises(ScheduleError, match=r"3 models.*2 block count"):
        three.predicted_saving([12, 4])


# ---------------------------------------------------------------------------------------- parser


@FAST
@given(s=schedules)
def test_spec_round_trip(s):
    assert ModelSchedule.parse(s.to_spec()) == s
    assert ModelSchedule.parse(s.to_spec().lower(), steps=s.steps) == s


SPEC_ALPHABET = "hlmxHLMX0123456789-:,./% \tqsandwichfirstlastmiddlesegmentsallheavylight"


@FAST
@given(
    text=st.one_of(
        st.text(max_size=30),
        st.text(alphabet=SPEC_ALPHABET, max_size=30),
        st.lists(st.sampled_from(["L3", "H2", "M2x1", "L0", "", " l 4 ", "x"]), max_size=5).map("-".join),
    ),
    steps=st.one_of(st.none(), st.integers(1, 60)),
)
def test_garbage_parses_or_raises_schedule_error(text, steps):
    try:
        s = ModelSchedule.parse(text, steps)
    except ScheduleError as err:
        assert repr(text) in str(err)  # every parse error quotes the spec
        return
    assert isinstance(s, ModelSchedule) and 1 <= s.steps <= MAX_STEPS
    assert steps is None or s.steps == steps


@pytest.mark.parametrize(
    "spec, steps, expected",
    [
        ("L2-H4-L2", None, [1, 1, 0, 0, 0, 0, 1, 1]),
        (" l 2 -h4- L2 ", 8, [1, 1, 0, 0, 0, 0, 1, 1]),
        ("M2x2-M0x1-M1x1", None, [2, 2, 0, 1]),
        ("heavy", 3, [0, 0, 0]),
        ("ALL-HEAVY", 2, [0, 0]),
        ("light", 2, [1, 1]),
        ("all-light", 1, [1]),
        ("all:2", 2, [2, 2]),
        ("sandwich:0.25", 8, [1, 0, 0, 0, 0, 0, 0, 1]),
        (" Sandwich : 25% ", 8, [1, 0, 0, 0, 0, 0, 0, 1]),
        ("first:0.5", 4, [1, 1, 0, 0]),
        ("last:.5", 4, [0, 0, 1, 1]),
        ("q2:0.25", 8, [0, 0, 1, 1, 0, 0, 0, 0]),
        ("middle:1", 3, [1, 1, 1]),
        ("first:0", 3, [0, 0, 0]),
        ("segments:0,9", 10, [1] + [0] * 8 + [1]),
        ("segments:", 10, [0] * 10),
        ("SEGMENTS/2: 1", 4, [0, 0, 1, 1]),
    ],
)
def test_parse_examples(spec, steps, expected):
    assert ModelSchedule.parse(spec, steps).indices == tuple(expected)


@pytest.mark.parametrize(
    "spec, steps, needles",
    [
        ("", None, ["''", "expected"]),
        ("   ", 5, ["expected"]),
        ("wedge:0.25", 10, ["'wedge'", "sandwich", "q4"]),
        ("sandwich:1.5", 10, ["'1.5'", "[0, 1]"]),
        ("first:150%", 10, ["150%", "[0, 1]"]),
        ("first:-0.1", 10, ["'-0.1'"]),
        ("q1:abc", 10, ["'abc'"]),
        ("L0-H5", None, ["'L0'", "positive"]),
        ("L3-H-2", None, ["'H'"]),
        ("L3--H4", None, ["empty run"]),
        ("L3-Q4", None, ["'Q4'", "H<n>"]),
        ("segments:1,x", 20, ["'x'"]),
        ("segments:3,3", 20, ["duplicate", "3"]),
        ("segments:10", 20, ["10", "out of range"]),
        ("segments/0:", 20, ["n_segments", "0"]),
        ("L3-H4", 8, ["7", "steps=8"]),
        ("sandwich:0.25", None, ["needs the number of steps"]),
        ("heavy", None, ["needs the number of steps"]),
        ("heavy", 0, ["steps must be a positive integer", "0"]),
        ("heavy", -4, ["-4"]),
        ("L99999999999999", None, ["too large"]),
        ("M999x1", None, ["999"]),
    ],
)
def test_parse_errors_name_the_problem(spec, steps, needles):
    with pytest.raises(ScheduleError) as info:
        ModelSchedule.parse(spec, steps)
    message = str(info.value)
    assert repr(spec) in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_parse_rejects_non_strings():
    with pytest.raises(ScheduleError, match="string"):
        ModelSchedule.parse(["L3"])


# ---------------------------------------------------------------------------------- noise schedule


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_log_linear_noise(eps):
    noise = LogLinearNoise(eps)
    t = torch.tensor([0.01, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    sigma = noise.sigma(t)
    assert torch.allclose(1 - torch.exp(-sigma), noise.move_chance(t))
    assert torch.allclose(noise.move_chance(t), (1 - eps) * t)
    h = 1e-6  # central difference of sigma matches dsigma
    fd = (noise.sigma(t[:-1] + h) - noise.sigma(t[:-1] - h)) / (2 * h)
    assert torch.allclose(fd, noise.dsigma(t[:-1]), rtol=1e-6)
    assert torch.allclose(noise.loss_weight(t[:-1]), 1 / t[:-1])  # MDLM's dsigma/expm1(sigma) == 1/t
    # floats and tensors agree
    assert noise.sigma(0.5) == pytest.approx(float(sigma[2]))
    assert noise.loss_weight(0.5) == pytest.approx(2.0)
    assert noise.dsigma(0.25) == pytest.approx(float(noise.dsigma(t[1])))


def test_noise_rejects_bad_eps():
    with pytest.raises(ValueError, match="1.5"):
        LogLinearNoise(1.5)


def test_sampling_grid_matches_mdlm():
    ts = sampling_timesteps(8)
    assert ts.dtype == torch.float64 and ts.shape == (9,)
    assert ts[0] == 1.0 and ts[-1] == 1e-5
    dt = sampling_dt(8)
    assert dt == (1 - 1e-5) / 8
    assert torch.allclose(ts[:-1] - ts[1:], torch.full((8,), dt, dtype=torch.float64))
    assert sampling_timesteps(4, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="0"):
        sampling_timesteps(0)
