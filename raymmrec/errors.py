"""Errors a user can fix, and how a command reports them: one line, no traceback.

Layers raise :class:`UserError` subclasses (or the standard errors listed in :data:`EXPECTED`)
with a message that names what is wrong and what was expected. :func:`run_main` runs a command
and turns those into ``error: <message>`` on stderr and exit code 2; anything else is a bug and
keeps its traceback. Kept free of heavy imports so that every entry point can use it.

Example::

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return run_main(lambda: train(args), verbose=args.verbose)
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable

#: Exit code of a command stopped by an expected (user) error.
EXIT_ERROR = 2
#: Exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the user can fix (bad input, configuration, environment); reported without traceback."""


class ConfigError(UserError, ValueError):
    """A bad configuration value or key. The message is one line: ``<key>: expected <what>, got <value>``."""


#: Exceptions :func:`run_main` reports as one line: ours, bad values and data (``DataError`` is a
#: ``ValueError``), missing files, unknown names (``KeyError``) and a diverged loss (NaN).
EXPECTED: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, KeyError, FloatingPointError)


def error_message(exc: BaseException) -> str:
    """``exc``'s message on one line (a ``KeyError``'s without the quotes ``str`` adds)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(exc).__name__


def run_main(fn: Callable[[], int | None], verbose: bool = False) -> int:
    """Run ``fn`` and return its exit code (``None`` counts as 0).

    Expected errors (:data:`EXPECTED`) print ``error: <message>`` on stderr and return 2, with the
    traceback above it only when ``verbose``; Ctrl-C prints ``interrupted`` and returns 130.
    Other exceptions propagate with their traceback: they are bugs, not user errors.
    """
    try:
        code = fn()
    except KeyboardInterrupt:
        _report("interrupted", verbose)
        return EXIT_INTERRUPTED
    except EXPECTED as exc:
        _report(f"error: {error_message(exc)}", verbose)
        return EXIT_ERROR
    return 0 if code is None else int(code)


def _report(line: str, verbose: bool) -> None:
    sys.stdout.flush()  # progress lines first, so the error is the last thing printed
    if verbose:
        traceback.print_exc()
    print(line, file=sys.stderr, flush=True)
