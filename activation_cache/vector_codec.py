"""How a hook's vectors are stored, and the one place they are encoded and decoded.

``float32``, ``bfloat16`` and ``float16`` store each vector as it is, cast. ``float8_e4m3``
stores each vector ``x`` as ``q = fp8(x / s)`` with one float32 scale per vector,
``s = max|x| / 448``, in a tensor of its own beside the hook's (``<hook>.scale``, [n]): the
largest element lands on e4m3's largest finite value, so no vector overflows or loses its
small elements to a scale chosen for another. Decoding is ``q.float() * s``. An all-zero
vector gets ``s = 0`` and decodes to zeros. At d = 512 that is 516 bytes a vector against
bfloat16's 1024 (0.504×); a float32 scale adds only float32 rounding (a bfloat16 one, for
2 bytes less, would add up to 0.4% per vector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STORED_AS: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float8_e4m3": torch.float8_e4m3fn,
}
"""Store dtype name (what the manifest and `--store-dtype` say) → the element dtype on disk."""

SCALED = (torch.float8_e4m3fn,)  # element dtypes stored with one scale per vector
FP8_E4M3_MAX = 448.0
SCALE_SUFFIX = ".scale"


def scale_name(hook: str) -> str:
    """The tensor that holds `hook`'s per-vector scales in a scaled store."""
    return hook + SCALE_SUFFIX


def is_scaled(dtype: torch.dtype) -> bool:
    return dtype in SCALED


def gatherable(values: torch.Tensor) -> torch.Tensor:
    """`values` as torch gathers and concatenates them on every device: fp8 viewed as its bytes
    (a view, no copy), since fp8 indexing kernels are missing from some torch builds and devices."""
    return values.view(torch.uint8) if values.element_size() == 1 and values.is_floating_point() else values


@dataclass
class EncodedVectors:
    """Vectors as a store holds them: `values` [n, d] in the element dtype and, for a scaled
    dtype, `scale` (float32 [n]); `decode` gives them back as float32 on their device."""

    values: torch.Tensor
    scale: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.values)

    def head(self, n: int) -> EncodedVectors:
        """The first `n` vectors (views)."""
        return EncodedVectors(self.values[:n], None if self.scale is None else self.scale[:n])

    def select(self, index: torch.Tensor) -> EncodedVectors:
        values = gatherable(self.values).index_select(0, index).view(self.values.dtype)
        return EncodedVectors(values, None if self.scale is None else self.scale.index_select(0, index))

    def to(self, device: torch.device, non_blocking: bool = False) -> EncodedVectors:
        return EncodedVectors(
            self.values.to(device, non_blocking=non_blocking),
            None if self.scale is None else self.scale.to(device, non_blocking=non_blocking),
        )

    def tensors(self) -> list[torch.Tensor]:
        return [self.values] if self.scale is None else [self.values, self.scale]

    def decode(self) -> torch.Tensor:
        """float32 [n, d] on the values' device: the only place stored vectors are widened."""
        wide = self.values.float()
        return wide if self.scale is None else wide * self.scale[:, None]

    def readable(self) -> torch.Tensor:
        """What a reader that widens for itself takes: the values as stored when they need no
        scale (bfloat16 stays half the memory), else the decoded float32 vectors."""
        return self.values if self.scale is None else self.decode()

    @staticmethod
    def cat(parts: list[EncodedVectors]) -> EncodedVectors:
        if len(parts) == 1:
            return parts[0]
        scales = [p.scale for p in parts if p.scale is not None]
        values = torch.cat([gatherable(p.values) for p in parts]).view(parts[0].values.dtype)
        return EncodedVectors(values, torch.cat(scales) if scales else None)


def encode(x: torch.Tensor, dtype: torch.dtype) -> EncodedVectors:
    """[n, d] activations (any float dtype) → how a store of element dtype `dtype` holds them,
    computed on `x`'s device."""
    if not is_scaled(dtype):
        return EncodedVectors(x.to(dtype))
    x = x.float()
    scale = x.abs().amax(-1) / FP8_E4M3_MAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero vectors: q = 0, s = 0
    # The clamp only absorbs the last-bit rounding of x / (max|x| / 448): e4m3fn has no infinity,
    # and a value past its largest finite one would become NaN.
    values = (x / divisor[:, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(dtype)
    return EncodedVectors(values, scale)
