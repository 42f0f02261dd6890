"""CPU threads that survive a busy machine: how OpenMP worker threads wait.

torch's CPU kernels run on an OpenMP pool (GNU libgomp in the Linux wheels). Between and inside
parallel regions an idle worker spins before it sleeps (libgomp: 300000 spins by default, several
milliseconds). On a machine where another process holds a core, the spinning worker keeps the core
that the thread it waits for needs; on 2 cores with one busy competitor the main job ran 19x slower
with torch's default 2 threads than with 1. A passive wait policy makes idle workers sleep at once,
which costs little on a quiet machine (benchmarks/results/threads_cpu.json).

libgomp reads the policy once, when torch loads it, so it must be in the environment before
``import torch``. The ``mdlm-fast`` command sets it itself (see :func:`passive_wait_for_command_line`);
a script that imports torch sets it first::

    import os
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch is imported
    import torch, mdlm_fast as mf

or from the shell: ``OMP_WAIT_POLICY=PASSIVE python my_script.py``. :func:`wait_policy` says what
the running process got. This module imports nothing heavy: ``mdlm_fast/__init__.py`` runs it
before torch.
"""

from __future__ import annotations

import os
import sys

#: Variables by which a user has already chosen how OpenMP threads wait (GNU and Intel OpenMP).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
COMMAND = "mdlm-fast"
CLI_MODULES = ("mdlm_fast.cli", "mdlm_fast.cli.__main__", "mdlm_fast.cli.app")


def user_chose_wait_policy(environ=os.environ) -> bool:
    return any(environ.get(name) for name in WAIT_VARIABLES)


def set_passive_wait(environ=os.environ) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy. Returns whether it was set.

    Effective only before torch is imported (libgomp reads it at load)."""
    if user_chose_wait_policy(environ):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def launched_as_command(argv=None, orig_argv=None) -> bool:
    """Whether this process is the ``mdlm-fast`` command (the console script, or ``python -m
    mdlm_fast.cli``). While the package is imported for ``-m``, ``sys.argv[0]`` is still ``-m``;
    ``sys.orig_argv`` keeps the module name."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]) in (COMMAND, f"{COMMAND}.exe"):
        return True
    for i, arg in enumerate(orig_argv[:-1]):
        if arg == "-m":
            return orig_argv[i + 1] in CLI_MODULES
    return False


def passive_wait_for_command_line() -> bool:
    """The command line's default: a passive wait policy, when this process is ``mdlm-fast``, torch
    is not loaded yet and the user set none of :data:`WAIT_VARIABLES`. A library import changes
    nothing: the policy is process-wide and belongs to the application."""
    if "torch" in sys.modules or not launched_as_command():
        return False
    return set_passive_wait()


def wait_policy(environ=os.environ) -> str:
    """How this process's OpenMP threads wait, as far as the environment says: ``"passive"``,
    ``"active"``, ``"spin N"`` or ``"default (spin, then sleep)"``."""
    policy = (environ.get("OMP_WAIT_POLICY") or "").strip().lower()
    if policy in ("passive", "active"):
        return policy
    spins = environ.get("GOMP_SPINCOUNT")
    if spins:
        return f"spin {spins}"
    return "default (spin, then sleep)"
