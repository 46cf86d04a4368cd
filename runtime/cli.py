"""argv -> Settings, then app.run(). The only module that reads argv."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Sequence

from runtime import __version__
from runtime.config import ENV_PREFIX, from_sources, setting_fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-runtime", description="KServe V2 inference server for ONNX models")
    parser.add_argument("--version", action="store_true", help="print the version and the codec implementation")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over HTTP and gRPC",
        description=(
            "Serve a model repository. Every flag can also be set with the environment variable "
            f"{ENV_PREFIX}<FLAG_NAME> (e.g. {ENV_PREFIX}HTTP_PORT) or as a key of the TOML file given "
            "by --config-file (e.g. http_port = 8000). Precedence: flag > environment > file > default."
        ),
    )
    serve.add_argument("--config-file", type=Path, default=None, help="TOML file of settings")
    hints = typing.get_type_hints(__import__("runtime.config", fromlist=["Settings"]).Settings)
    for spec in setting_fields():
        flag = "--" + spec.name.replace("_", "-")
        env = ENV_PREFIX + spec.name.upper()
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f"{spec.metadata.get('doc', '')} Default: {shown}. Env: {env}. File key: {spec.name}."
        hint = hints[spec.name]
        if typing.get_origin(hint) is list:
            serve.add_argument(flag, dest=spec.name, action="append", default=None, help=help_text)
        elif hint is bool:
            # `--allow-spinning` alone means true; `--allow-http false` as tritonserver spells it.
            serve.add_argument(flag, dest=spec.name, nargs="?", const="true", default=None, metavar="BOOL", help=help_text)
        else:
            serve.add_argument(flag, dest=spec.name, default=None, metavar=spec.name.upper(), help=help_text)
    examples = commands.add_parser("write-examples", help="write the built-in example repository to a folder")
    examples.add_argument("path", type=Path)
    return parser


# The supervisor's children (runtime/supervisor.py): `python -m runtime _engine|_frontend`, not in --help.
CHILD_COMMANDS = ("_engine", "_frontend")


def _die_with_parent() -> None:
    """A child is killed when the supervisor dies, however it dies (PR_SET_PDEATHSIG on Linux)."""
    import ctypes
    import signal

    from runtime.supervisor import PARENT_PID_ENV

    expected = os.environ.get(PARENT_PID_ENV)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if expected is not None and os.getppid() != int(expected):
        os._exit(1)  # the parent died before the signal was armed


def child_main(command: str, argv: Sequence[str]) -> int:
    """The hidden subcommands: settings from the environment, the engine's address (and the index) from argv."""
    from runtime.config import settings_from_json
    from runtime.supervisor import CHILD_SETTINGS_ENV, decode_address

    parser = argparse.ArgumentParser(prog=f"model-runtime {command}")
    parser.add_argument("--engine-address", required=True)
    if command == "_frontend":
        parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    text = os.environ.get(CHILD_SETTINGS_ENV)
    if text is None:
        parser.error(f"{CHILD_SETTINGS_ENV} is not set: this subcommand is started by the supervisor only")
    settings = settings_from_json(text)
    _die_with_parent()
    address = decode_address(args.engine_address)
    if command == "_engine":
        from runtime.engine_host import run_engine

        return run_engine(settings, address)
    from runtime.frontend import run_frontend

    return run_frontend(settings, address, args.index)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in CHILD_COMMANDS:
        return child_main(arguments[0], arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.version:
        from runtime import codec

        print(f"model-runtime {__version__} (codec: {codec.IMPLEMENTATION})")
        return 0
    if args.command == "write-examples":
        from runtime.examples import write_example_repository

        print(write_example_repository(args.path))
        return 0
    if args.command != "serve":
        parser.print_help()
        return 2
    values = {spec.name: getattr(args, spec.name) for spec in setting_fields()}
    try:
        settings = from_sources(values, config_file=args.config_file)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    from runtime import app

    return app.run(settings)


if __name__ == "__main__":
    sys.exit(main())
