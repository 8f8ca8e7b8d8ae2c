"""The one base class of every error interp-sae raises on purpose.

Each of them names the problem and what to do about it, so the command line prints the message
and exits non-zero instead of showing a traceback (`interp_sae.cli_common.fail`). Subclasses also
derive from the built-in class that fits (ValueError for bad input, RuntimeError for a job that
cannot go on), so callers that catch those keep working.
"""

from __future__ import annotations


class InterpSAEError(Exception):
    """Something interp-sae refuses or cannot do; the message says why and how to fix it."""


class ConfigError(InterpSAEError, ValueError):
    """A setting, argument or input value that cannot be used as given."""
