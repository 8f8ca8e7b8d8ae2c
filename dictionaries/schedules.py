"""Learning-rate schedules as pure functions of the optimiser step, so resume needs only the step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from interp_sae.errors import ConfigError

ScheduleKind = Literal["cosine_warm_restarts", "constant", "warmup_constant", "warmup_cosine"]


@dataclass(kw_only=True)
class ScheduleConfig:
    """`cosine_warm_restarts` is the VAEase authors' schedule: PyTorch's CosineAnnealingWarmRestarts
    stepped once per batch, so `t0` counts batches (their T₀ = 5, T_mult = 2, η_min = 1e-6).
    `warmup_*` ramp linearly over `warmup_steps`, then hold (`constant`) or cosine-decay to `min_lr`
    at the last step (`cosine`)."""

    kind: ScheduleKind = "cosine_warm_restarts"
    t0: int = 5
    t_mult: int = 2
    min_lr: float = 1e-6
    warmup_steps: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("cosine_warm_restarts", "constant", "warmup_constant", "warmup_cosine"):
            raise ConfigError(f"unknown schedule kind {self.kind!r}")
        if self.t0 < 1 or self.t_mult < 1 or self.warmup_steps < 0:
            raise ConfigError("t0 and t_mult must be ≥ 1 and warmup_steps ≥ 0")


def _cosine(base: float, low: float, t: float, period: float) -> float:
    return low + (base - low) * (1 + math.cos(math.pi * t / period)) / 2


def learning_rate(config: ScheduleConfig, base_lr: float, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) in a run of `total_steps`."""
    if config.kind == "constant":
        return base_lr
    if config.kind == "cosine_warm_restarts":
        if config.t_mult == 1:
            return _cosine(base_lr, config.min_lr, step % config.t0, config.t0)
        t, period = step, config.t0
        while t >= period:  # walk the cycles: T₀, T₀·T_mult, ...
            t -= period
            period *= config.t_mult
        return _cosine(base_lr, config.min_lr, t, period)
    if step < config.warmup_steps:
        return base_lr * (step + 1) / config.warmup_steps
    if config.kind == "warmup_constant":
        return base_lr
    decay_steps = max(1, total_steps - config.warmup_steps - 1)
    return _cosine(base_lr, config.min_lr, min(step - config.warmup_steps, decay_steps), decay_steps)
