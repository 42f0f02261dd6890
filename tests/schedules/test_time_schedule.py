"""Schedules in diffusion time: spec, files, and that one schedule carries across step counts."""

import json

import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis: pip install -e .[test]")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

from mdlm_fast.schedules.model_schedule import ModelSchedule, ScheduleError, segment_bounds
from mdlm_fast.schedules.noise import sampling_timesteps
from mdlm_fast.schedules.time_schedule import TimeInterval, TimeSchedule, resolve_schedule, time_fractions


def test_spec_round_trip_and_model_lookup():
    ts = TimeSchedule.parse("time: 0.9-1=L, 0-0.1=l")
    assert ts.to_spec() == "time:0.9-1=L,0-0.1=L"
    assert TimeSchedule.parse(ts.to_spec()) == ts
    assert [ts.model_at(t) for t in (1.0, 0.95, 0.9, 0.5, 0.1, 0.05)] == [1, 1, 0, 0, 1, 1]
    assert ts.light_fraction == pytest.approx(0.2)


def test_default_model_and_other_indices():
    ts = TimeSchedule.parse("time:0.25-0.75=M2,default=L")
    assert ts.to_spec() == "time:0.25-0.75=M2,default=L"
    assert [ts.model_at(t) for t in (0.9, 0.5, 0.1)] == [1, 2, 1]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("sandwich:0.25", "starts with 'time:'"),
        ("time:0.5-0.4=L", "lo < hi"),
        ("time:0-1.5=L", "hi <= 1"),
        ("time:0.2-0.6=L,0.5-0.9=L", "overlap"),
        ("time:0.2-0.6=X", "cannot read"),
        ("time:0.2-0.6", "cannot read"),
    ],
)
def test_bad_specs_name_the_spec(spec, match):
    with pytest.raises(ScheduleError, match=match):
        TimeSchedule.parse(spec)


@pytest.mark.parametrize("steps", [10, 40, 64, 1000])
@pytest.mark.parametrize("spec", ["sandwich:0.25", "q2:0.25", "segments:0,3,7,8", "last:0.1", "heavy"])
def test_from_model_schedule_gives_the_schedule_back_at_its_own_steps(spec, steps):
    schedule = ModelSchedule.parse(spec, steps)
    assert TimeSchedule.from_model_schedule(schedule).at_steps(steps) == schedule


@pytest.mark.parametrize("spec", ["sandwich:0.25", "segments:0,1,8,9", "q3:0.3", "first:0.5"])
@pytest.mark.parametrize("steps", [10, 40, 64, 250])
def test_the_same_time_schedule_at_t_and_4t_has_the_same_light_fraction_per_segment(spec, steps):
    found = ModelSchedule.parse(spec, steps)
    carried = TimeSchedule.from_model_schedule(found).at_steps(4 * steps)
    ts = sampling_timesteps(steps).tolist()
    # Time segments of the original trajectory: 10 (or fewer when steps < 10) equal step segments.
    bounds = [ts[a] for a, _ in segment_bounds(steps, min(10, steps))] + [0.0]
    original = time_fractions(found, bounds)
    at_4t = time_fractions(carried, bounds)
    for n_t, n_4t in zip(original, at_4t):
        assert abs(n_4t - 4 * n_t) <= 1
    assert abs(carried.light_fraction - found.light_fraction) <= len(bounds) / (4 * steps)


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(0, 0.95), width=st.floats(0.01, 1), steps=st.integers(1, 400), k=st.integers(2, 5))
def test_steps_in_an_interval_scale_with_the_step_count(lo, width, steps, k):
    hi = min(1.0, lo + width)
    ts = TimeSchedule((TimeInterval(lo, hi, 1),))
    n = ts.at_steps(steps).counts()[1:] or (0,)
    n_k = ts.at_steps(k * steps).counts()[1:] or (0,)
    assert abs(n_k[0] - k * n[0]) <= k


def test_file_round_trip_keeps_the_source(tmp_path):
    ts = TimeSchedule.parse("time:0.9-1=L,0-0.1=L")
    ts = TimeSchedule(ts.intervals, source={"from": "calibrate", "metric": "kl"})
    path = tmp_path / "schedule.json"
    ts.save(path)
    back = TimeSchedule.load(path)
    assert back == ts and back.source == {"from": "calibrate", "metric": "kl"}
    assert json.loads(path.read_text())["spec"] == "time:0.9-1=L,0-0.1=L"
    assert [p.name for p in tmp_path.iterdir()] == ["schedule.json"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something else"}', "not a time-schedule file"),
        ('{"format": "mdlm_fast.schedules.time_schedule", "version": 9, "intervals": []}', "unsupported version"),
        ('{"format": "mdlm_fast.schedules.time_schedule", "version": 1, "intervals": [{"lo": 0.5}]}', "malformed"),
        (
            '{"format": "mdlm_fast.schedules.time_schedule", "version": 1, "intervals": [{"lo": 0.5, "hi": 0.2, "model": 1}]}',
            "lo < hi",
        ),
        (
            '{"format": "mdlm_fast.schedules.time_schedule", "version": 1, "spec": "time:0-0.5=L", '
            '"intervals": [{"lo": 0.5, "hi": 1, "model": 1}]}',
            "disagrees",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScheduleError, match=match) as info:
        TimeSchedule.load(path)
    assert "bad.json" in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ScheduleError, match="cannot read time schedule file .*missing.json"):
        TimeSchedule.load(tmp_path / "missing.json")


def test_resolve_schedule_takes_every_form():
    # The grid is linspace(1, 1e-5, T + 1): at T = 4 the steps run at t = 1, 0.75, 0.5000025, 0.25.
    assert resolve_schedule("time:0.5-1=L", 4) == ModelSchedule.parse("L3-H1")
    assert resolve_schedule(TimeSchedule.parse("time:0.6-1=L"), 8) == ModelSchedule.parse("L4-H4")
    assert resolve_schedule("sandwich:0.5", 4) == ModelSchedule.parse("L1-H2-L1")
    assert resolve_schedule([0, 1], None) == ModelSchedule.parse("H1-L1")
    with pytest.raises(ScheduleError, match="needs the number of steps"):
        resolve_schedule("time:0.5-1=L", None)
