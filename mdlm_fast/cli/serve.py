"""``mdlm-fast serve``: an OpenAI-compatible HTTP server over one engine (needs the ``serve`` extra)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from mdlm_fast.cli import loaders
from mdlm_fast.cli import validate as check
from mdlm_fast.cli.generate import DEFAULT_SCHEDULE, _load_tokenizer, _model_names, _read_schedule_file
from mdlm_fast.cli.validate import CliError

SERVE_MODULES = ("starlette", "uvicorn")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the serve extra)")
    a = p.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    a("--port", type=check.non_negative_int, default=8000, help="port; 0 picks a free one (default 8000)")
    a("--heavy", help="heavy denoiser: HF-style directory or Lightning .ckpt (default: embedded:heavy)")
    a("--light", help="light denoiser (default: embedded:light when --heavy is not given, else none)")
    check.add_checkpoint_arguments(p)
    a(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="compute dtype (default auto: bfloat16 where the CPU or GPU does it natively, else float32)",
    )
    a(
        "--tokenizer",
        help="'embedded', a tokenizer.json or a local HF tokenizer directory (default: embedded for "
        "the embedded models, else none: token ids only)",
    )
    a(
        "--schedule",
        default=None,
        help=f"default model schedule of requests, two models only "
        f"(default {DEFAULT_SCHEDULE}); a request's 'schedule' overrides it",
    )
    a(
        "--schedule-file",
        default=None,
        metavar="FILE",
        help="default time schedule of requests, a JSON file, instead of --schedule (default: none)",
    )
    a("--steps", type=check.positive_int, default=None, help="default denoising steps (default: the length)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    a("--threads", type=check.positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    a(
        "--engine",
        default=None,
        choices=["packed", "sequential"],
        help="packed (continuous batching) or sequential (one sample() per request, in arrival order) "
        "(default: packed where this build has it)",
    )
    a("--max-rows", type=check.positive_int, default=None, help="row budget per forward (default: per device)")
    a("--max-queue", type=check.positive_int, default=256, help="requests waiting before 429 (default 256)")
    a("--max-n", type=check.positive_int, default=16, help="sequences per request (default 16)")
    a(
        "--max-body-bytes",
        type=check.positive_int,
        default=1 << 20,
        help="request body limit, 413 past it (default 1 MiB)",
    )
    a("--stream-every", type=check.positive_int, default=8, help="steps between streamed snapshots (default 8)")
    a(
        "--grace-period",
        type=check.non_negative_float,
        default=10.0,
        help="seconds in-flight requests get to finish after SIGTERM (default 10)",
    )
    a("--model-name", default="mdlm-fast", help="the model id clients name (default mdlm-fast)")
    a(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="the server's log level on stderr (default warning)",
    )
    p.set_defaults(func=_cmd_serve)


def _check_extra() -> None:
    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"serve needs the serve extra ({', '.join(missing)} missing): pip install 'mdlm_fast[serve]'")


def _cmd_serve(args) -> int:
    _check_extra()
    from mdlm_fast.schedules.model_schedule import ScheduleError
    from mdlm_fast.schedules.time_schedule import resolve_schedule
    from mdlm_fast.serve.engines import build_engine, default_engine_kind
    from mdlm_fast.serve.runner import bind, serve
    from mdlm_fast.serve.service import ServeSettings, Service

    if args.heavy is None and args.light is not None:
        raise CliError("--light needs --heavy as well")
    if args.schedule is not None and args.schedule_file is not None:
        raise CliError("give --schedule or --schedule-file, not both")
    args.device = check.device("--device", args.device)
    check.threads(args.threads)
    names = _model_names(args)
    models = [loaders.load_model(name, flag, args).to(args.device) for name, flag in zip(names, ("--heavy", "--light"))]
    loaders.check_scheduled_pair(models, names)
    if len(models) == 1 and (args.schedule or args.schedule_file):
        raise CliError("--schedule needs two models to schedule: give --light as well")
    schedule, flag = (args.schedule or DEFAULT_SCHEDULE) if len(models) > 1 else None, "--schedule"
    if args.schedule_file is not None:
        schedule, flag = _read_schedule_file(args), "--schedule-file"
    if schedule is not None:
        try:  # checked once here, so a default that cannot run fails at start, not per request
            resolve_schedule(schedule, args.steps or 16).validate_for(len(models))
        except ScheduleError as exc:
            raise CliError(f"{flag} {schedule}: {exc}") from None
    tokenizer = _load_tokenizer(args, models)
    kind = args.engine or default_engine_kind()
    try:
        engine = build_engine(
            kind, models, device=args.device, dtype=args.dtype, max_rows=args.max_rows, max_queue=args.max_queue
        )
    except ValueError as exc:
        raise CliError(f"--engine {kind}: {exc}") from None
    settings = ServeSettings(
        model_name=args.model_name,
        engine_kind=kind,
        default_steps=args.steps,
        default_schedule=schedule,
        stream_every=args.stream_every,
        max_n=args.max_n,
        max_body_bytes=args.max_body_bytes,
    )
    svc = Service(engine, tokenizer, settings)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CliError(f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})") from None
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def announce() -> None:
        print(
            f"mdlm-fast serve: listening on {url} (engine {kind}, models {'/'.join(names)}, "
            f"model id {args.model_name})",
            file=sys.stderr,
            flush=True,
        )

    code = serve(svc, sock, grace_period_s=args.grace_period, log_level=args.log_level, on_ready=announce)
    if svc.loop.running:
        # The engine thread is inside a forward (or a whole sample() call, for the sequential engine)
        # that cannot be interrupted; every request has been answered, so leave now: letting the
        # interpreter finalize under a running torch op aborts the process instead.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
