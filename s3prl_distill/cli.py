"""s3prl-distill: distil speech SSL students and evaluate them with s3prl.

The command line is assembled from the packages: each contributes its subcommands through its ``commands.py``
(``add_commands``; see :mod:`s3prl_distill.commands`). This is the one core module that imports the packages above
the core, and only their ``commands`` modules, which import nothing heavy. ``s3prl-distill downstream ARGS...`` runs
s3prl's own downstream runner with ``ARGS`` passed through unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

from . import commands as core_commands
from .downstream_recipes import commands as downstream_commands
from .errors import UserError, user_message
from .pretrain import commands as pretrain_commands
from .quiet import SHOW_ENV, hide_known_noise

SHOW_WARNINGS_FLAG = "--show-third-party-warnings"

# The packages contributing subcommands, in the order --help lists them.
PACKAGES = (core_commands, pretrain_commands, downstream_commands)


def build_parser() -> argparse.ArgumentParser:
    """The ``s3prl-distill`` parser: one subcommand parser per command of each package in :data:`PACKAGES`."""
    return assemble()[0]


def assemble() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommands' parsers by name."""
    parser = argparse.ArgumentParser(prog="s3prl-distill", description=__doc__.splitlines()[0])
    parser.add_argument(SHOW_WARNINGS_FLAG, action="store_true",
                        help="show the known-harmless third-party warnings this command hides (README: "
                             f"'Console output'); the same as {SHOW_ENV}=1. Give it before the command name")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for package in PACKAGES:
        package.add_commands(subparsers)
    return parser, subparsers.choices


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SHOW_WARNINGS_FLAG]:  # a global flag: the commands after it never see it
        argv = argv[1:]
        os.environ[SHOW_ENV] = "1"  # also for the processes this command starts
    hide_known_noise()
    try:
        _dispatch(argv)
    except UserError as error:  # bad input: its message names it; a traceback would only hide it
        command = " ".join(["s3prl-distill", *argv[:1]])
        sys.stderr.write(f"{command}: {user_message(error)}\n")
        sys.exit(2)


def _dispatch(argv: List[str]) -> None:
    parser, commands = assemble()
    command = commands.get(argv[0]) if argv else None
    # A passthrough command (s3prl's downstream runner, our pretrain runner) parses everything after its name
    # itself, --help included; the pretrain runner sets up its own logging (console + train.log).
    if command is not None and command.get_default("passthrough"):
        if not command.get_default("own_logging"):
            _log_to_console()
        command.get_default("handler")(argv[1:])
        return
    _log_to_console()
    args = parser.parse_args(argv)
    args.handler(args)


def _log_to_console() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
