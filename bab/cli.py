"""The ``bab`` command line: a thin layer over the Python API.

Exit codes: 0 for any verdict, 2 for bad input (one line on stderr, no traceback), 1 for an
internal error. Each command lives in ``bab/commands/<name>.py`` and exposes ``register``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

PROCESS_START = time.monotonic()  # the competition times the whole process
COMMANDS = ("verify", "check", "bench", "demo", "config", "smooth", "train_smoothed", "compare", "train",
            "radius", "capabilities", "convert_vnnlib")
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Raised by commands for user errors that have already been put into words."""


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user gave us bad input' (exit code 2)."""
    from bab.api import InputMismatchError
    from bab.bench import BenchInputError
    from bab.config import ConfigError
    from bab.standard import StandardInputError
    from onnx_models.errors import OnnxModelError
    from vnnlib.parser import VnnlibError

    return (BadInput, StandardInputError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError,
            OnnxModelError, VnnlibError, InputMismatchError, ConfigError, BenchInputError)


def describe(exc: BaseException) -> str:
    """One line naming the problem."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    if isinstance(exc, (IsADirectoryError, PermissionError)) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _PrintAction(argparse.Action):
    """``--name`` / ``--version``: print one line from the package metadata and exit 0."""

    def __init__(self, option_strings: list[str], dest: str, text: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)
        self.text = text

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from bab import standard

        print(standard.solver_name() if self.text == "name" else standard.solver_version())
        parser.exit(EXIT_OK)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command registered (``only``: just that command, so a
    run imports only its own command module: start-up is counted in every instance)."""
    parser = argparse.ArgumentParser(
        prog="bab", description="Complete branch-and-bound neural-network verifier (ONNX + VNN-LIB).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    parser.add_argument("--name", action=_PrintAction, text="name",
                        help="print the solver's name and exit (VNN-LIB 2.0 §5.2)")
    parser.add_argument("--version", action=_PrintAction, text="version",
                        help="print the solver's version and exit (VNN-LIB 2.0 §5.2)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in (only,) if only in COMMANDS else COMMANDS:
        importlib.import_module(f"bab.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bab`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--name"], ["--version"]):  # answered without importing every command
        from bab import standard

        print(standard.solver_name() if argv[0] == "--name" else standard.solver_version())
        return EXIT_OK
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if isinstance(exc, bad_input_types()):
            print(f"bab {args.command}: error: {describe(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.debug:
            raise
        print(f"bab {args.command}: internal error: {type(exc).__name__}: {describe(exc)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    if getattr(args, "fast_exit", False):
        # one-shot commands skip interpreter teardown (torch's takes about a second): the
        # results file is closed and the streams are flushed, so nothing is lost
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code
