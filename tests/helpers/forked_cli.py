"""Run many ``mdlm-fast`` command lines, each in its own forked process, from one interpreter that
has imported torch and mdlm_fast once: a fresh interpreter per case would spend seconds on imports.

Each child has its own working directory, stdout and stderr (files, at the descriptor level) and
exit status, exactly as ``sys.exit(main(argv))`` in ``python -m mdlm_fast.cli`` would give. With
``refuse_sampling`` set, ``mdlm_fast.sample`` (and the ``sampling.api.sample`` it is) ends the
child with status 99: proof that the case was refused before any sampling began.

Usage: ``python forked_cli.py < cases.json > results.json``; cases are
``{"name", "argv", "cwd", "refuse_sampling"}``, results ``{name: {"status", "stdout", "stderr"}}``.
"""

import json
import os
import sys

SAMPLING_STARTED = 99


def _child(case: dict) -> None:
    import mdlm_fast
    from mdlm_fast.cli.app import main
    from mdlm_fast.sampling import api

    os.chdir(case["cwd"])
    out = os.open(os.path.join(case["logs"], "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(os.path.join(case["logs"], "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    if case.get("refuse_sampling"):

        def refuse(*args, **kwargs):
            sys.stderr.write("sampling started\n")
            sys.stderr.flush()
            os._exit(SAMPLING_STARTED)

        mdlm_fast.sample = api.sample = refuse
    argv = [
        bytes.fromhex(a["hex"]).decode("utf-8", "surrogateescape") if isinstance(a, dict) else a for a in case["argv"]
    ]  # bytes as the OS hands them to Python: surrogate-escaped
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    from mdlm_fast.cli.app import build_parser

    build_parser()  # import every subcommand's module before forking
    cases = json.load(sys.stdin)
    results = {}
    for case in cases:
        pid = os.fork()
        if pid == 0:
            try:
                _child(case)
            finally:
                os._exit(70)
        _, status = os.waitpid(pid, 0)
        with open(os.path.join(case["logs"], "stdout"), "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        with open(os.path.join(case["logs"], "stderr"), "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
        results[case["name"]] = {"status": os.waitstatus_to_exitcode(status), "stdout": stdout, "stderr": stderr}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
