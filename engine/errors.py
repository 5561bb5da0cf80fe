"""Errors meant for people: caught at the boundary (CLI), printed as one line, exit code 2."""
import functools
import os
import sys


class UsageError(Exception):
    """Bad flags, paths or files: the message says what is wrong and what to do."""


class DataError(RuntimeError):
    """A file that cannot be read (corrupt image, truncated file): the message names it."""


def cli_main(fn):
    """Run a CLI entry point: UsageError, DataError and out-of-memory become one line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except (UsageError, DataError) as e:
            _die(str(e))
        except MemoryError:
            _die("out of host memory: lower --batch-size or --workers")
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                _die("out of device memory: lower --batch-size (or --res), or use --amp bf16")
            raise
        except KeyboardInterrupt:
            _die("interrupted; resume with --resume", code=130)
    return wrapper


def _die(msg: str, code: int = 2):
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)
