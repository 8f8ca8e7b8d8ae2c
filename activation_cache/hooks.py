"""Hook names: validation against the bridge, and how far the forward pass must run."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from interp_sae.errors import ConfigError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class HookError(ConfigError):
    """A hook name the model does not have."""


def hook_layer(name: str) -> int | None:
    """The block a hook lives in, or None for hooks outside the blocks (embed, ln_final, ...)."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def validate_hooks(hooks: Iterable[str], available: Iterable[str], n_layers: int) -> list[str]:
    hooks = list(hooks)
    if not hooks:
        raise HookError("no hook given; pass e.g. --hook blocks.3.hook_resid_post")
    if len(set(hooks)) != len(hooks):
        raise HookError(f"hook names repeat: {hooks}")
    available = set(available)
    for name in hooks:
        layer = hook_layer(name)
        if layer is not None and layer >= n_layers:
            raise HookError(
                f"hook {name!r}: layer {layer} is out of range, the model has {n_layers} layers "
                f"(blocks.0 … blocks.{n_layers - 1})"
            )
        if name not in available:
            near = difflib.get_close_matches(name, available, n=1, cutoff=0.8)
            raise HookError(
                f"unknown hook {name!r}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + ". Hooks of block 0 (the same exist for every block):\n  "
                + "\n  ".join(sorted(h for h in available if h.startswith("blocks.0.")))
                + "\nOutside the blocks:\n  "
                + "\n  ".join(sorted(h for h in available if hook_layer(h) is None))
            )
    return hooks


def stop_layer(hooks: Iterable[str]) -> int | None:
    """``stop_at_layer`` for ``run_with_cache``: one past the deepest hooked block.

    None (run the whole model) when a hook lies after the blocks, e.g. ``ln_final.hook_out``."""
    layers = [hook_layer(h) for h in hooks]
    if any(
        layer is None and not h.startswith(("embed.", "hook_embed", "hook_pos_embed"))
        for layer, h in zip(layers, hooks)
    ):
        return None
    block_layers = [layer for layer in layers if layer is not None]
    return max(block_layers) + 1 if block_layers else 1
