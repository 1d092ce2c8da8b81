"""The framework's errors. Each says what is wrong and what to do; the command line prints its message on one
line and exits with its ``exit_code``: 2 for bad input (config, data, a saved query set, a command's argument), 3 for
a broken artifact or diverged numbers."""

from __future__ import annotations

import sys
from typing import Callable


class PQAttackError(Exception):
    """Base class: a failure the user can act on, reported without a traceback."""

    exit_code = 3
    kind = "error"


class ConfigError(PQAttackError, ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""

    exit_code = 2
    kind = "config"


class DatasetError(PQAttackError, RuntimeError):
    """A dataset that is missing, malformed or inconsistent; the message says which file and why."""

    exit_code = 2
    kind = "data"


class QuerySetError(PQAttackError, ValueError):
    """A saved adversarial query set that cannot be used here; the message says why."""

    exit_code = 2
    kind = "transfer"


class UsageError(PQAttackError, ValueError):
    """A command's argument that is not allowed (a folder where a file is to be written, a number out of range, a
    folder that holds no job's records); the message names the argument and what is allowed."""

    exit_code = 2
    kind = "usage"


class CacheError(PQAttackError, RuntimeError):
    """A cache entry that fails its checksum, cannot be read, or does not fit; the message names the entry."""

    exit_code = 3
    kind = "cache"


class CacheMiss(CacheError):
    """An artifact a load-only cache was asked for and does not hold (``ArtifactCache(load_only=...)``)."""


class NumericsError(PQAttackError, FloatingPointError):
    """NaN or Inf in a loss, features or codebooks: a training diverged."""

    exit_code = 3
    kind = "numerics"


def run_command(body: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """``body(argv)``, a command's work; a ``PQAttackError`` it raises is printed as the command line prints it (one
    line on stderr: ``<kind> error: <message>``) and ends the process with its ``exit_code``."""
    try:
        body(argv)
    except PQAttackError as exc:
        print(f"{exc.kind} error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
