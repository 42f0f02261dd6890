"""The ``mdlm-fast`` command line: one parser, one subcommand module per job, one error policy.

Subcommands: ``generate`` (the main job) and ``info`` (cli/generate.py); ``train`` and
``tokenizer`` (cli/train.py); ``evaluate``, ``importance``, ``search`` and ``calibrate``
(cli/analysis.py); ``serve`` (cli/serve.py). Results go to stdout, progress to stderr; bad arguments
end with a one-line error and exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from mdlm_fast.cli import analysis, generate, serve, train
from mdlm_fast.cli import validate as check
from mdlm_fast.cli.validate import CliError, OneLineParser

DESCRIPTION = (
    "Fast sampling for masked diffusion language models (MDLMs): sample from a heavy/light pair "
    "of denoisers under a model schedule, and measure, search and calibrate schedules."
)
EPILOG = (
    "Start with `mdlm-fast generate` (no checkpoint or network needed: the embedded models). "
    "Each command has its own --help. On a busy machine try --threads 1."
)


def build_parser() -> OneLineParser:
    from mdlm_fast.version import __version__

    parser = OneLineParser(prog="mdlm-fast", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"mdlm-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    generate.register(sub)  # generate, info
    train.register(sub)  # train, tokenizer
    analysis.register(sub)  # evaluate, importance, search, calibrate
    serve.register(sub)  # serve (the serve extra)
    return parser


def _error(message: str) -> int:
    print(f"mdlm-fast: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 2 a bad argument (one line on stderr), 130 Ctrl-C,
    141 stdout closed early (``| head``), the shell's status for a program stopped by SIGPIPE."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help (0) or a parse error (2, its line already printed)
            return exc.code if isinstance(exc.code, int) else 0
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, where it can still be handled
        return code
    except KeyboardInterrupt:
        print("mdlm-fast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Later writes (and the interpreter's final flush) must not fail again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (ValueError, OSError) as exc:  # CliError, CheckpointError, TokenizerError, ... are ValueErrors
        text = str(exc).strip()
        return _error(text.splitlines()[0] if text else type(exc).__name__)
    except MemoryError as exc:
        try:
            check.raise_if_out_of_memory(exc, "these sizes")
        except CliError as err:
            return _error(str(err))
        raise  # not reached: every MemoryError is an out-of-memory error
    except RuntimeError as exc:
        try:
            check.raise_if_out_of_memory(exc, "these sizes")
        except CliError as err:
            return _error(str(err))
        raise
