"""How every ``imle`` command reports errors, warnings and Ctrl-C: one line, an exit code."""

from __future__ import annotations

import argparse
import sys
import warnings

from imle.errors import CheckpointWarning, IMLEError


def run_handler(args: argparse.Namespace) -> int:
    """Runs ``args.func(args)`` as a command: errors of this package become one line on stderr
    (exit 2), file-system errors one line (exit 1), warnings of it ``imle CMD: warning: ...``,
    Ctrl-C before training (or outside it) a line and exit 130 instead of a traceback."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (CheckpointWarning,)) or "imle" in str(filename):
            print(f"imle {args.command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        return int(args.func(args))
    except IMLEError as e:
        print(f"imle {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or an unwritable path: the outputs are left as they were
        print(f"imle {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imle {args.command}: interrupted (Ctrl-C); nothing partial was written",
              file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
