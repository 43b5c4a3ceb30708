"""The ``cvlocal`` command line: a thin layer that parses arguments and calls library functions.

Each sub-command lives in ``cvlocal/commands/<name>.py`` and provides ``register(subparsers,
common)``, which adds its parser and sets ``func`` to a function taking the parsed arguments and
returning an exit status. Errors become one line on stderr (``--debug`` shows the traceback):
exit 2 for bad usage or input, 1 for a failure of the work (an ``OSError`` such as a full disk or
a read-only folder included: the path and the errno's meaning), 130 for Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from typing import Sequence

from convert.errors import ConvertError
from cvlocal import __version__
from cvlocal.errors import UsageError, WorkError
from cvlocal.heap import tune_malloc

# Help lists the commands in the order of the pipeline; any other module found is appended.
COMMAND_ORDER = ["extract", "merge", "convert", "imatrix", "quantize", "chat", "serve", "eval", "sweep", "release", "demo"]


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 2 and a one-line error, as the CLI contract says."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command accepts: --quiet, --json and --debug."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter on stderr")
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return common


def _command_modules() -> list[str]:
    import cvlocal.commands as package

    found = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    return [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every sub-command registered."""
    parser = _Parser(prog="cvlocal", description="Chat vectors, locally: extract, merge, convert to GGUF, chat, serve, evaluate.")
    parser.add_argument("--version", action="version", version=f"cvlocal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = common_options()
    for name in _command_modules():
        try:
            importlib.import_module(f"cvlocal.commands.{name}").register(sub, common)
        except ImportError as err:  # one broken or optional command must not take the others down
            _register_unavailable(sub, common, name, err)
    return parser


def _register_unavailable(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, name: str, err: ImportError) -> None:
    """A placeholder that explains, when used, why a command could not be loaded."""
    reason = " ".join(str(err).split())

    def run(args: argparse.Namespace) -> int:
        sys.stderr.write(f"cvlocal {name}: unavailable: {reason}. Reinstall cvlocal (pip install -e '.[server]').\n")
        return 1

    p = sub.add_parser(name, parents=[common], help=f"(unavailable: {reason[:60]})")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def os_error_line(err: OSError) -> str:
    """``PATH: meaning of the errno`` (both paths of a rename), without Python's ``[Errno N]``."""
    meaning = os.strerror(err.errno) if err.errno else (err.strerror or str(err) or err.__class__.__name__)
    paths = [os.fsdecode(p) for p in (err.filename, err.filename2) if p is not None and isinstance(p, (str, bytes, os.PathLike))]
    return f"{' -> '.join(paths)}: {meaning}" if paths else " ".join(meaning.split())


class _NoteHandler(logging.Handler):
    """The converter library's notes (e.g. a stale partial it removed) as one line each on stderr."""

    def __init__(self, quiet: bool) -> None:
        super().__init__(logging.INFO)
        self.quiet = quiet

    def emit(self, record: logging.LogRecord) -> None:
        if not self.quiet or record.levelno >= logging.WARNING:
            sys.stderr.write(f"cvlocal: note: {' '.join(record.getMessage().split())}\n")


NOTE_LOGGERS = ("convert", "cvlocal.outputs")  # the converter library's and the output policy's notes


def _route_library_notes(quiet: bool) -> logging.Handler:
    handler = _NoteHandler(quiet)
    for name in NOTE_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m cvlocal``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    tune_malloc()
    handler = _route_library_notes(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConvertError) as err:  # bad usage, or bad input the library found
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"cvlocal: error: {err}\n")
        return 2
    except WorkError as err:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"cvlocal: error: {' '.join(str(err).split())}\n")
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        sys.stderr.write("cvlocal: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as err:  # the disk filled up, a folder is read-only, ...: the work failed
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"cvlocal: error: {os_error_line(err)}\n")
        return 1
    finally:
        for name in NOTE_LOGGERS:
            logging.getLogger(name).removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
