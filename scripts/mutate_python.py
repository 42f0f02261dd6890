"""Proof that the Python tests can fail: apply one plausible one-line bug at a time to a copy of
the package and run the tests that should catch it.

usage: python scripts/mutate_python.py [--jobs N] [--only NAME ...] [--list] [--target 0.95]

Each mutant names the line it changes and the tests (pytest node ids) paired with it. The tree is
never edited: every worker copies mdlm_fast/ and tests/ into a temporary folder and edits the copy,
restoring the line after each run. The paired tests first run once unmutated (they must pass,
or a "catch" would mean nothing). Prints a Markdown table (mutant, caught, first failing test),
the catch rate and the survivors; exit status 1 below the target rate, 2 when the harness itself
fails (a line no longer found, a test selection that is empty or fails unmutated), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under mdlm_fast/
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple  # pytest node ids


def m(name, file, original, mutated, *tests):
    return Mutant(name, file, original, mutated, tests)


SAMPLER = "tests/sampling/test_sampler.py"
EXACT = "tests/sampling/test_sampler_exactness.py"
PATHS = "tests/sampling/test_sampler_paths.py"
SCHEDULE = "tests/schedules/test_schedule.py"
FLOPS = "tests/schedules/test_flops.py"
CKPT = "tests/models/test_checkpoint.py"
PAIRED = "tests/analysis/test_paired.py"
RULES = "tests/package/test_documented_rules.py"

MUTANTS = [
    # --- sampling: the fast sampler ---------------------------------------------------------
    m(
        "fast: every reveal one step later",
        "sampling/fast.py",
        "survival = run.timesteps[1:].flip(0)",
        "survival = run.timesteps[:-1].flip(0)",
        f"{SAMPLER}::test_output_distribution_is_exact",
        f"{EXACT}::test_output_law_is_exact_and_nearby_laws_are_rejected",
    ),
    m(
        "fast: conditions on ts[step + 1]",
        "sampling/fast.py",
        "run.schedule[plan.step], ts[plan.step], run.temperature",
        "run.schedule[plan.step], ts[plan.step + 1], run.temperature",
        f"{PATHS}::test_every_forward_runs_the_scheduled_model_at_its_grid_sigma",
    ),
    m(
        "fast: ignores the temperature",
        "sampling/fast.py",
        "ts[plan.step], run.temperature, PURPOSE_TOKEN)",
        "ts[plan.step], 1.0, PURPOSE_TOKEN)",
        f"{PATHS}::test_temperature_reaches_the_fast_sampler_through_sample",
        f"{EXACT}::test_tempered_law_is_exact",
    ),
    m(
        "fast: noise removal on the token stream",
        "sampling/fast.py",
        "run.temperature, PURPOSE_NOISE_REMOVAL)",
        "run.temperature, PURPOSE_TOKEN)",
        f"{PATHS}::test_noise_removal_draws_on_its_own_stream_through_a_run",
    ),
    m(
        "fast: the next step's model",
        "sampling/fast.py",
        "_reveal(run, x, plan, run.schedule[plan.step],",
        "_reveal(run, x, plan, run.schedule[min(plan.step + 1, steps - 1)],",
        f"{PATHS}::test_every_forward_runs_the_scheduled_model_at_its_grid_sigma",
    ),
    m(
        "fast: noise removal by the first step's model",
        "sampling/fast.py",
        "_reveal(run, x, removal, run.schedule[-1],",
        "_reveal(run, x, removal, run.schedule[0],",
        f"{PATHS}::test_noise_removal_draws_on_its_own_stream_through_a_run",
    ),
    m(
        "fast: greedy and ancestral swapped",
        "sampling/fast.py",
        'greedy = run.noise_removal == "greedy"',
        'greedy = run.noise_removal != "greedy"',
        f"{PATHS}::test_noise_removal_draws_on_its_own_stream_through_a_run",
    ),
    m(
        "fast: keys of the next step",
        "sampling/fast.py",
        "keys = step_keys(step, rows, positions)",
        "keys = step_keys(step + 1, rows, positions)",
        f"{PATHS}::test_noise_removal_draws_on_its_own_stream_through_a_run",
    ),
    m(
        "fast: a uniform on a grid time reveals a step later",
        "sampling/fast.py",
        "step = steps - torch.searchsorted(survival, u)",
        "step = steps - torch.searchsorted(survival, u, right=True)",
        f"{EXACT}::test_output_law_is_exact_and_nearby_laws_are_rejected",
    ),
    # --- sampling: MDLM's sampler and sample() ------------------------------------------------
    m(
        "mdlm: dt of a finer grid",
        "sampling/run.py",
        "return sampling_dt(self.schedule.steps, self.final_time)",
        "return sampling_dt(self.schedule.steps + 1, self.final_time)",
        f"{SAMPLER}::test_output_distribution_is_exact",
    ),
    m(
        "mdlm: caches a time-conditioned model",
        "sampling/mdlm.py",
        "if model.time_conditioning or changed:",
        "if changed:",
        f"{PATHS}::test_mdlm_sampler_reuses_p_x0_only_for_models_without_time_conditioning",
    ),
    m(
        "mdlm: reveal mass without mc(s)",
        "sampling/mdlm.py",
        "q = p_x0.double() * (mc_t - mc_s)",
        "q = p_x0.double() * mc_t",
        f"{SAMPLER}::test_output_distribution_is_exact",
    ),
    m(
        "mdlm: noise removal at the last step's sigma",
        "sampling/mdlm.py",
        "run.sigma(ts[-1], batch))",
        "run.sigma(ts[-2], batch))",
        f"{PATHS}::test_every_forward_runs_the_scheduled_model_at_its_grid_sigma",
    ),
    m(
        "mdlm: one Gumbel stream for every step",
        "sampling/mdlm.py",
        "keys[:, 0] = i",
        "keys[:, 0] = 0",
        f"{SAMPLER}::test_output_distribution_is_exact",
        f"{EXACT}::test_output_law_is_exact_and_nearby_laws_are_rejected",
    ),
    m(
        "sample(): the mdlm sampler takes any temperature",
        "sampling/api.py",
        'if sampler == "mdlm" and temperature != 1.0:',
        'if sampler == "mdlm" and temperature > 1.0:',
        f"{SAMPLER}::test_bad_arguments",
    ),
    m(
        "sample(): ancestral noise removal for the mdlm sampler",
        "sampling/api.py",
        'if sampler != "fast" and noise_removal != "greedy":',
        'if sampler == "confidence" and noise_removal != "greedy":',
        f"{SAMPLER}::test_bad_arguments",
    ),
    # --- schedules: noise, time grid, model schedules -----------------------------------------
    m(
        "noise: sigma without log1p's sign",
        "schedules/noise.py",
        "return -torch.log1p(x) if torch.is_tensor(x) else -math.log1p(x)",
        "return -torch.log1p(x) if torch.is_tensor(x) else math.log1p(-x)",
        f"{PATHS}::test_every_forward_runs_the_scheduled_model_at_its_grid_sigma",
    ),
    m(
        "noise: dt without eps",
        "schedules/noise.py",
        "return (1.0 - eps) / _check_steps(steps)",
        "return 1.0 / _check_steps(steps)",
        f"{SCHEDULE}::test_sampling_grid_matches_mdlm",
    ),
    m(
        "noise: the grid ends at 0",
        "schedules/noise.py",
        "torch.linspace(1.0, eps, steps + 1",
        "torch.linspace(1.0, 0.0, steps + 1",
        f"{PATHS}::test_every_forward_runs_the_scheduled_model_at_its_grid_sigma",
    ),
    m(
        "schedule: centered block, spare step before",
        "schedules/placement.py",
        "first = start + (end - start - n) // 2",
        "first = start + (end - start - n + 1) // 2",
        f"{PATHS}::test_placements_and_segments_with_odd_slack",
    ),
    m(
        "schedule: sandwich's extra step at the end",
        "schedules/placement.py",
        "head = (n + 1) // 2",
        "head = n // 2",
        f"{PATHS}::test_placements_and_segments_with_odd_slack",
    ),
    m(
        "schedule: light count rounds down",
        "schedules/placement.py",
        "return int((exact * steps + Fraction(1, 2)).__floor__())",
        "return int((exact * steps).__floor__())",
        f"{SCHEDULE}::test_light_step_count_rounds_half_up",
    ),
    m(
        "schedule: larger segments last",
        "schedules/placement.py",
        "end = start + base + (1 if k < extra else 0)",
        "end = start + base + (1 if k >= parts - extra else 0)",
        f"{PATHS}::test_placements_and_segments_with_odd_slack",
    ),
    m(
        "schedule: segment index n accepted",
        "schedules/placement.py",
        "if not 0 <= value < n_segments:",
        "if not 0 <= value <= n_segments:",
        f"{SCHEDULE}::test_segment_examples_and_errors",
    ),
    m(
        "schedule: H and L swapped in run specs",
        "schedules/grammar.py",
        'if word == "h":\n        return HEAVY',
        'if word == "l":\n        return HEAVY',
        f"{SCHEDULE}::test_parse_examples",
    ),
    # --- FLOPs --------------------------------------------------------------------------------
    m(
        "flops: attention counted once",
        "schedules/flops.py",
        "per_token = (8 + 4 * shape.mlp_ratio) * d * d + 4 * length * d",
        "per_token = (8 + 4 * shape.mlp_ratio) * d * d + 2 * length * d",
        f"{FLOPS}::test_block_flops_by_hand",
    ),
    m(
        "flops: pruned last block without its key/value projections",
        "schedules/flops.py",
        "((shape.n_blocks - 1) * per_token + 4 * d * d)",
        "((shape.n_blocks - 1) * per_token)",
        f"{FLOPS}::test_block_flops_with_the_last_block_at_a_few_queries_by_hand",
    ),
    m(
        "flops: head without the factor 2",
        "schedules/flops.py",
        "return 2 * shape.hidden_dim * shape.vocab_size",
        "return shape.hidden_dim * shape.vocab_size",
        f"{FLOPS}::test_head_and_forward_flops_by_hand",
    ),
    m(
        "flops: noise removal charged to the heavy model",
        "schedules/flops.py",
        "forwards[noise_removal_model] += 1",
        "forwards[0] += 1",
        f"{RULES}::test_the_noise_removal_forward_is_charged_to_the_model_that_runs_it",
    ),
    # --- checkpoints --------------------------------------------------------------------------
    m(
        "checkpoint: mask_token_id ignored",
        "models/checkpoints/hf.py",
        'if "mask_index" not in config and isinstance(config.get("mask_token_id"), int):',
        'if "mask_index" in config and isinstance(config.get("mask_token_id"), int):',
        f"{RULES}::test_hugging_face_mask_token_id_names_the_mask",
    ),
    m(
        "checkpoint: backbone prefix needed on every key",
        "models/checkpoints/backbone.py",
        "if not any(k.startswith(PREFIX) for k in state):",
        "if not all(k.startswith(PREFIX) for k in state):",
        f"{CKPT}::test_lightning_ckpt_with_and_without_ema",
        f"{CKPT}::test_lightning_ckpt_without_ema_uses_state_dict",
    ),
    m(
        "checkpoint: EMA weights used when not asked",
        "models/checkpoints/lightning.py",
        "shadow = ema_shadow(ckpt, file) if ema else None",
        "shadow = ema_shadow(ckpt, file)",
        f"{CKPT}::test_lightning_ckpt_with_and_without_ema",
    ),
    m(
        "checkpoint: one block fewer inferred",
        "models/checkpoints/backbone.py",
        'out["n_blocks"] = max(indices) + 1',
        'out["n_blocks"] = max(indices)',
        f"{CKPT}::test_lightning_without_config_needs_n_heads",
    ),
    # --- paired statistics --------------------------------------------------------------------
    m(
        "paired: ratio SE with ddof 0",
        "analysis/paired.py",
        "se = influence.std(ddof=1) / math.sqrt(k)",
        "se = influence.std(ddof=0) / math.sqrt(k)",
        f"{PAIRED}::test_ratio_difference_with_equal_counts_is_a_mean_difference",
    ),
    m(
        "paired: mean SE over sqrt(k - 1)",
        "analysis/paired.py",
        "d.std(ddof=1) / math.sqrt(k), d[idx].mean(1), k)",
        "d.std(ddof=1) / math.sqrt(k - 1), d[idx].mean(1), k)",
        f"{PAIRED}::test_mean_difference_se_matches_the_textbook_formula",
    ),
    m(
        "paired: a 90% bootstrap interval",
        "analysis/paired.py",
        "low, high = np.quantile(boot, [0.025, 0.975])",
        "low, high = np.quantile(boot, [0.05, 0.95])",
        f"{RULES}::test_the_bootstrap_interval_is_the_central_95_percent",
    ),
    m(
        "paired: unpaired SE as a sum",
        "analysis/paired.py",
        "return math.hypot(se_a, se_b)",
        "return se_a + se_b",
        f"{RULES}::test_unpaired_se_is_the_root_sum_of_squares",
    ),
    m(
        "paired: gen-PPL ratio SE without the ratio",
        "analysis/paired.py",
        '"gen_ppl_ratio_se": ratio * d.se',
        '"gen_ppl_ratio_se": d.se',
        f"{RULES}::test_gen_ppl_ratio_se_is_the_delta_method",
    ),
    # --- CLI validators -----------------------------------------------------------------------
    m(
        "cli: temperature 0 refused",
        "cli/validate.py",
        'if value < 0:\n        raise argparse.ArgumentTypeError(f"must be a number >= 0',
        'if value <= 0:\n        raise argparse.ArgumentTypeError(f"must be a number >= 0',
        f"{PATHS}::test_temperatures_through_the_cli_match_sample",
    ),
    m(
        "cli: seed 2^64 accepted",
        "cli/validate.py",
        "if not 0 <= value < 2**64:",
        "if not 0 <= value <= 2**64:",
        f"{RULES}::test_cli_value_checks_at_their_bounds",
    ),
    m(
        "cli: a fraction of 0 refused",
        "cli/validate.py",
        'if not 0 <= value <= 1:\n        raise argparse.ArgumentTypeError(f"must lie in [0, 1]',
        'if not 0 < value <= 1:\n        raise argparse.ArgumentTypeError(f"must lie in [0, 1]',
        f"{RULES}::test_cli_value_checks_at_their_bounds",
    ),
    m(
        "cli: --length equal to model_length refused",
        "cli/validate.py",
        "    if value > limit:",
        "    if value >= limit:",
        f"{RULES}::test_a_size_may_equal_its_limit",
    ),
    m(
        "validate: the minimum itself refused",
        "util/validate.py",
        "if minimum is not None and v < minimum:",
        "if minimum is not None and v <= minimum:",
        f"{RULES}::test_cli_value_checks_at_their_bounds",
    ),
]

#: Mutants that no test can catch, and why (reported, not counted against the rate).
EQUIVALENT: dict = {
    "fast: a uniform on a grid time reveals a step later": (
        "differs only where a float64 uniform in (0, 1) equals a grid time ts[i] exactly: probability "
        "about 2^-53 per position, so no test can draw it"
    ),
}


def _copy_tree(dest: Path) -> None:
    """mdlm_fast/ (the shipped assets linked, not copied: no mutant touches them), tests/ and the
    pytest configuration, without bytecode caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "assets")
    shutil.copytree(ROOT / "mdlm_fast", dest / "mdlm_fast", ignore=ignore)
    if (ROOT / "mdlm_fast" / "assets").exists():
        os.symlink(ROOT / "mdlm_fast" / "assets", dest / "mdlm_fast" / "assets")
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


class Runner:
    """Runs pytest in copies of the tree; kills every child on interruption."""

    def __init__(self, python: str, threads_per_run: int):
        self.python = python
        self.threads = threads_per_run
        self.children: set = set()
        self.lock = threading.Lock()
        self.stopping = False

    def pytest(self, copy: Path, tests: tuple) -> tuple[int, str]:
        env = dict(
            os.environ,
            PYTHONPATH=str(copy),
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
        )
        cmd = [self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        with self.lock:
            if self.stopping:
                return -1, ""
            proc = subprocess.Popen(
                cmd,
                cwd=copy,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.children.add(proc)
        try:
            out, _ = proc.communicate(timeout=PER_RUN_TIMEOUT_S)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            self._kill(proc)
            proc.communicate()
            return 124, ""
        except BaseException:  # Ctrl-C while waiting: the child runs in its own session, end it here
            self._kill(proc)
            proc.wait()
            raise
        finally:
            with self.lock:
                self.children.discard(proc)

    def _kill(self, proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in list(self.children):
                self._kill(proc)


def _stop(runner: Runner, futures) -> None:
    """End the running children and drop the queued mutants; a second Ctrl-C must not stop this."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    runner.stop()
    for future in futures:
        future.cancel()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        match = re.match(r"(?:FAILED|ERROR) (.+?)(?: - |$)", line)  # parameter ids may hold spaces
        if match:
            return match.group(1).split("/")[-1]
    return "(collection or process error)"


def _check_applicable(mutants) -> None:
    for mut in mutants:
        text = (ROOT / "mdlm_fast" / mut.file).read_text()
        count = text.count(mut.original)
        if count != 1:
            raise SystemExit(
                f"mutate_python: mutant {mut.name!r}: its line occurs {count} times in "
                f"mdlm_fast/{mut.file} (must be once); update the mutant"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--target", type=float, default=0.95, help="the catch rate below which it fails (0.95)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a CI timeout cleans up like Ctrl-C

    mutants = [mut for mut in MUTANTS if not args.only or any(s in mut.name for s in args.only)]
    if args.list:
        for mut in mutants:
            print(
                f"{mut.name}\n    mdlm_fast/{mut.file}: {mut.original!r} -> {mut.mutated!r}\n    {' '.join(mut.tests)}"
            )
        return 0
    if not mutants:
        print("mutate_python: no mutant matches --only", file=sys.stderr)
        return 2
    _check_applicable(mutants)
    jobs = max(1, min(args.jobs, len(mutants)))
    runner = Runner(sys.executable, threads_per_run=max(1, (os.cpu_count() or 1) // jobs))
    start = time.time()

    with tempfile.TemporaryDirectory(prefix="mdlm-mutate-") as tmp:
        copies = [Path(tmp) / f"copy{j}" for j in range(jobs)]
        free = list(copies)
        free_lock = threading.Lock()

        def run_one(mut):
            with free_lock:
                copy = free.pop()
            try:
                if mut is None:  # the baseline: every paired test, unmutated
                    tests = tuple(dict.fromkeys(t for x in mutants for t in x.tests))
                    return runner.pytest(copy, tests)
                target = copy / "mdlm_fast" / mut.file
                original = target.read_text()
                target.write_text(original.replace(mut.original, mut.mutated))
                try:
                    return runner.pytest(copy, mut.tests)
                finally:
                    target.write_text(original)
            finally:
                with free_lock:
                    free.append(copy)

        try:
            for copy in copies:
                _copy_tree(copy)
            rc, out = run_one(None)
            if rc != 0:
                print(out[-4000:])
                print(
                    f"mutate_python: the paired tests fail on the unmutated package (exit {rc}); nothing to measure",
                    file=sys.stderr,
                )
                return 2
            print(f"baseline: the paired tests pass unmutated ({time.time() - start:.0f} s)", flush=True)
            with ThreadPoolExecutor(jobs) as pool:
                futures = [pool.submit(run_one, mut) for mut in mutants]
                try:
                    results = [f.result() for f in futures]
                except KeyboardInterrupt:
                    _stop(runner, futures)
                    raise
        except KeyboardInterrupt:
            _stop(runner, [])
            print(
                "\nmutate_python: interrupted; the temporary copies are removed, the tree was never edited",
                file=sys.stderr,
            )
            return 130

    rows, survivors, caught = [], [], 0
    for mut, (rc, out) in zip(mutants, results):
        if rc not in (0, 1, 2, 124):  # 3-5: pytest's internal, usage and no-tests errors
            print(out[-2000:])
            print(
                f"mutate_python: mutant {mut.name!r}: pytest could not run its tests (exit {rc}); is a node id gone?",
                file=sys.stderr,
            )
            return 2
        if rc in (1, 2, 124):
            caught += 1
            how = "timeout" if rc == 124 else f"`{_first_failure(out)}`"
            rows.append(f"| {mut.name} | yes | {how} |")
        elif mut.name in EQUIVALENT:
            rows.append(f"| {mut.name} | equivalent | {EQUIVALENT[mut.name]} |")
        else:
            survivors.append(mut)
            rows.append(f"| {mut.name} | **no** | {' '.join(mut.tests)} |")
    counted = len([r for r in rows if "| equivalent |" not in r])
    rate = caught / counted if counted else 1.0
    print("| mutant | caught | first failing test |\n|---|---|---|")
    print("\n".join(rows))
    equivalent = len(rows) - counted
    print(
        f"\ncaught {caught} of {counted} mutants ({rate:.0%}; target {args.target:.0%})"
        + (f", {equivalent} equivalent (not counted)" if equivalent else "")
        + f" in {time.time() - start:.0f} s with {jobs} jobs"
    )
    for mut in survivors:
        print(f"survivor: {mut.name} (mdlm_fast/{mut.file}: {mut.original!r} -> {mut.mutated!r})")
    return 0 if rate >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
