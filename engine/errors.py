"""Errors meant for people: caught at the boundary (CLI), printed as one line, exit code 2."""
import argparse
import functools
import os
import re
import sys


# A layer below the command line (loaders/, models/) names the argument it was given in backquotes, `data`;
# the command line shows it as its flag, --data (UsageError.for_cli). A Python caller reads about its arguments,
# never about flags it did not pass.
_ARG = re.compile(r"`([a-z][a-z0-9_]*)`")


class _Said:
    def for_cli(self) -> str:
        return _ARG.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(self))


class UsageError(_Said, Exception):
    """Bad arguments, flags, paths or files: the message says what is wrong and what to do."""


class DataError(_Said, RuntimeError):
    """A file that cannot be read (corrupt image, truncated file): the message names it."""


def cli_main(fn):
    """Run a CLI entry point: UsageError, DataError and out-of-memory become one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except (UsageError, DataError) as e:
            _die(e.for_cli())
        except MemoryError:
            _die(UsageError("out of host memory: lower `batch_size` or `workers`").for_cli())
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                _die(UsageError("out of device memory: lower `batch_size` (or `res`), or use `amp` bf16").for_cli())
            raise
        except KeyboardInterrupt:
            _die(UsageError("interrupted; resume with `resume`").for_cli(), code=130)
    return wrapper


def _die(msg: str, code: int = 2):
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def parser_error_one_line(p: argparse.ArgumentParser):
    """argparse prints usage + error; we print one line and exit 2."""
    def error(msg):
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {msg} (see --help)", file=sys.stderr)
        sys.exit(2)
    p.error = error
