"""Where a training run reports: a JSONL file (one record per event), readable console lines
(printed through tqdm so they do not break the progress bar), and wandb when asked for."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _json_safe(value: Any) -> Any:
    """NaN/Inf are not JSON: write them as strings so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class RunLog:
    def __init__(
        self,
        path: str | Path,
        wandb_project: str | None = None,
        wandb_config: dict | None = None,
        wandb_id: str | None = None,
        enabled: bool = True,
    ) -> None:
        """`enabled=False` (the non-zero ranks of a distributed run) records and prints nothing."""
        self.enabled = enabled
        self._file = open(path if enabled else os.devnull, "a")  # noqa: SIM115 (open for the whole run)
        self._wandb = None
        if wandb_project and enabled:
            try:
                import wandb
            except ImportError:
                raise RuntimeError(
                    "wandb logging was asked for but wandb is not installed: pip install wandb"
                ) from None
            self._wandb = wandb.init(project=wandb_project, config=wandb_config, id=wandb_id, resume="allow")

    def record(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps(_json_safe({"event": event, **fields})) + "\n")
        self._file.flush()
        if self._wandb is not None and "step" in fields:
            prefix = f"{fields['dictionary']}/" if "dictionary" in fields else ""
            numbers = {
                f"{prefix}{event}/{k}": v
                for k, v in _flatten(fields).items()
                if isinstance(v, (int, float)) and k != "step"
            }
            self._wandb.log(numbers, step=fields["step"])

    def say(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flatten(fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
