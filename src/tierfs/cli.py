"""The `tierfs` command: `tierfs coordinator`, `tierfs client`, `tierfs warm PATH...` and
`tierfs status`.

Flags follow the original Go-style spelling (`-port 8080`) and accept two dashes alike.
A bad value prints one line naming the flag and exits 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pydantic import BaseModel

from tierfs import __version__
from tierfs.errors import ConfigError, TierfsError
from tierfs.settings import (
    ClientSettings,
    CommonSettings,
    CoordinatorSettings,
    StatusSettings,
    WarmSettings,
    flag_fields,
    load_settings,
)
from tierfs.units import format_size

EXIT_USAGE = 2
EXIT_FAILURE = 1
_DURATION_SUFFIXES = ("timeout", "ttl", "interval", "expiry", "retention")


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit 2, and whose flags that take
    a value take one that starts with a dash (`-metadata-ttl -1s`: argparse would read
    `-1s` as a flag, and say "expected one argument"), so that the value's check says
    what is wrong with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: set[str] = set()  # every spelling of every flag
        self.value_flags: set[str] = set()  # those of the flags that take one value
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags |= set(action.option_strings)
        if action.option_strings and action.nargs is None:
            self.value_flags |= set(action.option_strings)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} -help)\n")

    def parse_known_args(  # type: ignore[override]  # argparse's overloads
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        joined: list[str] = []
        for arg in given:
            previous = joined[-1] if joined else ""
            if previous in self.value_flags and arg.startswith("-") and arg not in self.flags:
                joined[-1] = f"{previous}={arg}"  # argparse's own spelling of such a value
            else:
                joined.append(arg)
        return super().parse_known_args(joined, namespace)


def _default_text(value: Any, name: str) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and name.endswith("_mode"):
        return f"{value:o}"  # as the flag takes it: octal
    if isinstance(value, int) and name.endswith("size"):
        return format_size(value)
    if isinstance(value, float) and name.endswith(_DURATION_SUFFIXES):
        return f"{value / 3600:g}h" if value >= 3600 and value % 3600 == 0 else f"{value:g}s"
    return str(value)


def _metavar(name: str) -> str:
    if name.endswith("size"):
        return "SIZE"
    if name.endswith(_DURATION_SUFFIXES):
        return "DURATION"
    return name.rsplit("_", 1)[-1].upper()


def _add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    flags = flag_fields(model)
    # The command's own flags first (the original spec's order), the shared ones after.
    for name in sorted(flags, key=lambda n: n in CommonSettings.model_fields):
        field = model.model_fields[name]
        spelled = name.replace("_", "-")
        text = f"{field.description} (default: {_default_text(field.default, name)}"
        if flags[name].get("env"):
            text += f"; env {flags[name]['env']}"
        yes_or_no = field.annotation is bool  # alone it means yes; `-direct-io=false` says no
        parser.add_argument(
            f"-{spelled}",
            f"--{spelled}",
            dest=name,
            metavar="true|false" if yes_or_no else _metavar(name),
            nargs="?" if yes_or_no else None,
            const="true" if yes_or_no else None,
            help=text + ")",
        )
    env_only = [
        f"{extra['env']} ({field.description})"
        for field in model.model_fields.values()
        if isinstance(extra := field.json_schema_extra, dict) and not extra.get("flag")
    ]
    if env_only:
        parser.epilog = "environment: " + "; ".join(env_only)


def _subcommand(
    subparsers: Any, name: str, model: type[BaseModel], summary: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        prefix_chars="-",
        allow_abbrev=False,
        add_help=False,
    )
    parser.add_argument("-h", "-help", "--help", action="help", help="show this help and exit")
    _add_flags(parser, model)
    parser.set_defaults(model=model)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one subparser per command."""
    parser = _Parser(prog="tierfs", allow_abbrev=False, add_help=False)
    parser.add_argument("-h", "-help", "--help", action="help", help="show this help and exit")
    parser.add_argument("-version", "--version", action="version", version=f"tierfs {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _subcommand(
        subparsers,
        "coordinator",
        CoordinatorSettings,
        "run the coordinator: membership, file locations and cluster statistics",
    )
    _subcommand(
        subparsers,
        "client",
        ClientSettings,
        "mount a bucket through the three-tier cache and serve the cache to peers",
    )
    warm = _subcommand(
        subparsers,
        "warm",
        WarmSettings,
        "bring files or folders of a mount into its node's tier 1 before they are read",
    )
    warm.add_argument("paths", nargs="+", metavar="PATH", help="a file or folder on a mount")
    _subcommand(
        subparsers,
        "status",
        StatusSettings,
        "show the cluster as its coordinator sees it: peers, tier-1 use, hits per tier",
    )
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _runner(command: str) -> Callable[[Any], Any]:
    if command == "client":
        from tierfs.client_node import run_client

        return run_client
    if command == "warm":
        from tierfs.warm_command import run_warm

        return run_warm
    if command == "status":
        from tierfs.status_command import run_status

        return run_status
    from tierfs.coordinator_node import run_coordinator

    return run_coordinator


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tierfs` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {
        name: value
        for name, value in vars(args).items()
        if name not in ("command", "model") and value is not None
    }
    try:
        settings = load_settings(args.model, given)
    except ConfigError as exc:
        print(f"tierfs {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings.log_level)
    try:
        asyncio.run(_runner(args.command)(settings))
    except KeyboardInterrupt:
        return 0
    except TierfsError as exc:
        print(f"tierfs {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
