"""The `chatstream-gateway` command: serve, make-tiny-model, bench."""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.settings import Settings

if TYPE_CHECKING:  # imported where used: `--help` and `bench` need neither
    from fastapi import FastAPI

    from gateway.drain import DrainingServer


def _flag_kind(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if annotation is bool:
        return "bool"
    if typing.get_origin(annotation) is list:
        return "list"
    if args and bool in args:
        return "bool"
    return "value"


# Settings whose flag also answers to vLLM's name for it.
_VLLM_NAMES = {"api_processes": ("--api-server-count",)}


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; each also reads CHATSTREAM_<NAME> from the environment.

    Not pydantic-settings' own CLI source: it splits list values at commas and
    strips brackets (a session secret or API key with a comma would become two,
    and `--engine-arg 'k={"a":1,"b":2}'` would break), and its help cannot name
    each flag's environment variable.
    """
    for name, field in Settings.model_fields.items():
        flags = ("--" + name.replace("_", "-"), *_VLLM_NAMES.get(name, ()))
        env = f"CHATSTREAM_{name.upper()}"
        kind = _flag_kind(field.annotation)
        default = field.get_default(call_default_factory=True)
        shown = "***" if "secret" in name or "key" in name else default
        help_text = f"{field.description} [env {env}; default {shown}]"
        if kind == "bool":
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "list":
            # Repeated or several at once, as vLLM takes `--served-model-name NAME [NAME ...]`.
            parser.add_argument(
                *flags, dest=name, action="extend", nargs="+", default=None, metavar="VALUE", help=help_text
            )
        else:
            parser.add_argument(*flags, dest=name, default=None, metavar=name.upper(), help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**given)


def serve(settings: Settings) -> None:
    from gateway.app import create_app
    from gateway.tiny_model import build_tiny_model, is_model_dir

    if settings.model is None and not is_model_dir(settings.tiny_model_dir):
        logging.getLogger(__name__).info("building the tiny offline model in %s", settings.tiny_model_dir)
        build_tiny_model(settings.tiny_model_dir)
    try:
        app = create_app(settings)
    except ValueError as err:  # a setting that only the files or the middleware could check
        print(f"chatstream-gateway: error: {err}", file=sys.stderr)
        sys.exit(2)
    if settings.api_processes > 1:
        # The app above only checked the settings: each front-end process builds its own.
        from gateway.processes.launcher import serve_processes

        sys.exit(serve_processes(settings))
    server = run_server(app, settings, watch_children=True)
    if not server.started:
        sys.exit(3)  # uvicorn's exit status for a failed start-up
    if server.engine_died:
        sys.exit(1)


def run_server(app: FastAPI, settings: Settings, *, watch_children: bool) -> DrainingServer:
    """Serve `app` (create_app's) on uvicorn until the server stops, as `serve` does; the stopped server.

    SIGTERM drains first (gateway.drain); what is still running after
    drain_timeout gets a few more seconds before uvicorn cancels it.
    """
    import uvicorn

    from gateway.drain import DrainingServer

    # access_log=False: the gateway writes its own one line per request (gateway/access_log.py).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,
        # "auto" would serve on after a failed start (a store that cannot be reached), answering
        # every request with 500: "on" stops the server with the start-up error instead.
        lifespan="on",
    )
    core = app.state.core
    watched = core.engine if settings.exit_on_engine_death else None
    server = DrainingServer(
        config, core.admission, settings.drain_timeout, engine=watched, watch_children=watch_children
    )
    server.run()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatstream-gateway", description="Streaming chat over vLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the gateway over HTTP")
    add_settings_flags(serve_parser)
    tiny = commands.add_parser("make-tiny-model", help="write the tiny offline model into DIR")
    tiny.add_argument("directory", metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0, help="weights and tokenizer seed [default 0]")
    # Listed here for --help; its own parser (benchmarks/cli.py) reads its arguments.
    commands.add_parser("bench", help="run the benchmark harness (`chatstream-gateway bench -h`)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from benchmarks.cli import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "make-tiny-model":
        from gateway.tiny_model import build_tiny_model

        print(build_tiny_model(args.directory, seed=args.seed))
        return 0
    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        parser.error(str(err))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
