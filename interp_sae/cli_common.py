"""The command line's boundary, shared by every command module.

`boundary` turns what interp-sae raises on purpose (any `InterpSAEError`) and operating-system
errors (a missing file, a full disk) into one red line and exit code 2, so a user sees the
message and what to do, not a traceback. With `kept`, Ctrl-C ends a long job with exit 130 and a
line saying what was kept and that rerunning the same command resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from interp_sae.errors import InterpSAEError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(error: BaseException | str) -> NoReturn:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=EXIT_ERROR)


@contextmanager
def boundary(kept: str | None = None) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        if kept is None:
            raise
        typer.secho(f"\ninterrupted: {kept}; rerun the same command to resume", fg=typer.colors.YELLOW, err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (InterpSAEError, OSError) as error:
        fail(error)


ALLOW_OTHER_STORE_HELP = (
    "Use the dictionary on a store other than the one it was trained on (its fingerprint differs); its held-out "
    "split then means nothing."
)
ALLOW_OTHER_HOOK_HELP = "Use the dictionary at a hook other than the one it was trained on (--hook)."
