"""The activation store's on-disk format: the one contract every reader and writer shares.

A store is a folder::

    manifest.json                 provenance, shard list with sizes and checksums (this module)
    shards/shard-000000.safetensors
    tokenizer/                    the tokenizer, saved with ``save_pretrained`` (JSON only)

Each shard holds ``rows`` packed context rows of ``context_length`` tokens:

* ``token_ids``      int32  [rows, ctx]  the model input
* ``doc_ids``        int64  [rows, ctx]  index of the source document, -1 for BOS/separator/padding
* ``doc_positions``  int32  [rows, ctx]  position of the token inside its document, -1 likewise
* one tensor per hook, named exactly like the hook (e.g. ``blocks.3.hook_resid_post``),
  [rows * ctx, d] in the store dtype: row-major over (row, position), so vector ``i`` of a
  shard is row ``i // ctx``, position ``i % ctx``.
* in a ``float8_e4m3`` store, beside each hook its per-vector scales ``<hook>.scale``,
  float32 [rows * ctx] (see ``vector_codec.py``; readers get the decoded vectors).

A vector's *global index* is ``first_row * ctx + i`` of its shard: every position, BOS and
padding included, stays addressable; readers exclude ``doc_ids == -1`` from training data.

The manifest is rewritten atomically after every shard, so it only ever lists shards that
are completely on disk: that is what makes a killed harvest resumable.

Integrity (format version 2): each shard record holds the whole file's size and sha256 (what
``interp-sae verify`` and ``--repair`` check) and, per tensor, an xxh3-64 checksum of its bytes
(``checksums``). Training reads only the tensors it needs and checks each one's xxh3 the first
time a process reads it: about 20 times cheaper than sha256 and it never reads the other hooks.
Version-1 stores (no ``checksums``) are still read; their shards are checked with sha256, once
per shard per process.

Format version 3 adds the ``float8_e4m3`` store dtype and, per shard record, ``reconstruction``:
for each hook, the sums of ‖x − x̂‖² and ‖x‖² over the shard's document tokens, ``x`` the
activation in float32 and ``x̂`` the stored vector decoded. The manifest's totals give each hook's
relative error (their ratio over all shards), exact however the harvest was interrupted.

A harvest run under ``torchrun`` with N processes writes N *streams*: process r packs the
documents whose index is r modulo N into its own shards (``shards/stream-r-of-N-shard-i``)
and keeps its own partial manifest (``manifest.stream-r-of-N.json``); when every process is
done, rank 0 merges them into ``manifest.json``, which lists every shard with the stream it
belongs to. Readers only ever read ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash

from interp_sae.atomic import write_json_atomic
from interp_sae.errors import InterpSAEError

from .vector_codec import STORED_AS

FORMAT_NAME = "interp-sae-activation-store"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 2 added per-tensor xxh3 checksums; 3 float8_e4m3 and reconstruction errors
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
TOKENIZER_DIR = "tokenizer"

TOKEN_IDS = "token_ids"
DOC_IDS = "doc_ids"
DOC_POSITIONS = "doc_positions"
RESERVED_TENSORS = (TOKEN_IDS, DOC_IDS, DOC_POSITIONS)

STORE_DTYPES = tuple(STORED_AS)


class StoreFormatError(InterpSAEError, ValueError):
    """The store on disk is not what the format says it must be."""


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's bytes lie in a safetensors file."""

    dtype: str  # safetensors' name: BF16, F32, I64, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def safetensors_layout(head: bytes | memoryview | mmap.mmap) -> dict[str, TensorSpan]:
    """Parse a safetensors header (the file's first bytes: an 8-byte little-endian length, then
    that many bytes of JSON) into each tensor's absolute byte span. `head` may be the whole file."""
    if len(head) < 8:
        raise StoreFormatError("file too short for a safetensors header")
    (length,) = struct.unpack("<Q", bytes(head[:8]))
    if len(head) < 8 + length:
        raise StoreFormatError(f"safetensors header of {length} bytes is cut short")
    try:
        header = json.loads(bytes(head[8 : 8 + length]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreFormatError(f"safetensors header is not JSON ({exc})") from exc
    base = 8 + length
    return {
        name: TensorSpan(
            info["dtype"], tuple(info["shape"]), base + info["data_offsets"][0], base + info["data_offsets"][1]
        )
        for name, info in header.items()
        if name != "__metadata__"
    }


def tensor_checksum(data: bytes | memoryview) -> str:
    """The fast per-tensor checksum recorded in format version 2."""
    return xxhash.xxh3_64_hexdigest(data)


SAFETENSORS_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float8_e4m3fn: "F8_E4M3",
}


def safetensors_parts(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[tuple[str, memoryview]]]:
    """The safetensors encoding of `tensors` as (header, each tensor's bytes, in file order), the
    bytes being views of the tensors' own memory: writing them costs no serialised copy.

    The layout follows the format's specification (an 8-byte little-endian header length, a JSON
    header padded with spaces to a multiple of 8, then the tensors back to back); tensors go
    largest element size first, so each starts aligned to its element size, as safetensors'
    own writer does. `safetensors.safe_open` and `load_file` read the result."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in order:
        tensor = tensors[name].detach().contiguous().cpu()
        data = tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else memoryview(b"")
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        blobs.append((name, data))
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded, blobs


def parts_checksums(head: bytes, blobs: list[tuple[str, memoryview]]) -> tuple[str, dict[str, str]]:
    """(sha256 of the whole file, xxh3 of each tensor) of a file written as `head` then `blobs`."""
    whole = hashlib.sha256(head)
    for _, data in blobs:
        whole.update(data)
    return whole.hexdigest(), {name: tensor_checksum(data) for name, data in blobs}


def shard_file_name(index: int, stream: int = 0, streams: int = 1) -> str:
    """The only name shard ``index`` of a stream may have: a manifest cannot point anywhere else."""
    if streams == 1:
        return f"{SHARD_DIR}/shard-{index:06d}.safetensors"
    return f"{SHARD_DIR}/stream-{stream}-of-{streams}-shard-{index:06d}.safetensors"


def partial_manifest_name(stream: int, streams: int) -> str:
    """Where one process of a multi-process harvest records its own shards."""
    return MANIFEST_NAME if streams == 1 else f"manifest.stream-{stream}-of-{streams}.json"


@dataclass(frozen=True)
class PackerState:
    """Where the packer stands in the corpus: the next token to pack is token ``offset`` of
    document ``doc``. Recorded at every shard boundary so a resumed harvest can restart there."""

    doc: int = 0
    offset: int = 0


@dataclass
class ShardRecord:
    file: str
    rows: int
    first_row: int
    valid_tokens: int  # tokens that belong to a document (not BOS, separator or padding)
    bytes: int
    sha256: str
    end_state: PackerState
    nonfinite_positions: int = 0  # positions left out because an activation was NaN/Inf
    stream: int = 0  # which process of a multi-process harvest wrote it
    checksums: dict[str, str] = field(default_factory=dict)  # tensor name → xxh3-64 (format 2; empty in 1)
    # hook → [Σ‖x − x̂‖², Σ‖x‖²] over the shard's document tokens (format 3; empty before)
    reconstruction: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class HookRecord:
    name: str
    d: int


@dataclass
class Manifest:
    """Everything needed to read the store and to say how it was made."""

    identity: dict[str, Any]  # the harvest settings that determine the bytes on disk
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    dataset: dict[str, Any]
    hooks: list[HookRecord]
    dtype: str
    context_length: int
    shard_rows: int
    target_tokens: int
    package_version: str
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    stop_reason: str | None = None  # "budget" or "corpus_exhausted" once complete
    streams: int = 1  # processes that harvested it (see the module docstring)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # -- derived totals -------------------------------------------------------------
    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def tokens(self) -> int:
        return self.rows * self.context_length

    @property
    def valid_tokens(self) -> int:
        return sum(s.valid_tokens for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def nonfinite_positions(self) -> int:
        return sum(s.nonfinite_positions for s in self.shards)

    @property
    def reconstruction_error(self) -> dict[str, float | None]:
        """Per hook, Σ‖x − x̂‖² / Σ‖x‖² over every document token: what storing cost against the
        float32 activations. None where a shard predates format 3 (or the hook saw no tokens)."""
        errors: dict[str, float | None] = {}
        for hook in self.hooks:
            sums = [s.reconstruction.get(hook.name) for s in self.shards]
            error, norm = (math.fsum(s[i] for s in sums if s) for i in (0, 1))
            errors[hook.name] = error / norm if all(sums) and norm > 0 else None
        return errors

    @property
    def fingerprint(self) -> str:
        """The store's identity: a digest of the settings that determine its bytes (model,
        tokenizer, corpus, hooks, dtype, context). Extending the token budget keeps it; any other
        harvest gets another. Dictionaries record it to recognise the store they came from."""
        canonical = json.dumps(self.identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def hook(self, name: str) -> HookRecord:
        for hook in self.hooks:
            if hook.name == name:
                return hook
        raise StoreFormatError(
            f"hook {name!r} is not in this store; it holds {[h.name for h in self.hooks]}. "
            "Pass one of those, or harvest the hook you want."
        )

    def start_state(self, index: int) -> PackerState:
        """The packer state shard ``index`` started from: the end of the previous shard of its stream."""
        earlier = [s for s in self.shards[:index] if s.stream == self.shards[index].stream]
        return earlier[-1].end_state if earlier else PackerState()

    def resume_state(self) -> PackerState:
        """Where the harvest of a one-stream manifest (or a partial one) continues."""
        return self.shards[-1].end_state if self.shards else PackerState()

    # -- (de)serialisation ----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["totals"] = {
            "rows": self.rows,
            "tokens": self.tokens,
            "valid_tokens": self.valid_tokens,
            "bytes": self.bytes,
            "shards": len(self.shards),
            "nonfinite_positions": self.nonfinite_positions,
            "reconstruction_error": self.reconstruction_error,
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        if data.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{where}: not an interp-sae activation store manifest")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreFormatError(
                f"{where}: store format version {version!r} is newer than this interp-sae "
                f"understands ({FORMAT_VERSION}). Upgrade interp-sae to read it."
            )
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in fields}
            kwargs["hooks"] = [HookRecord(**h) for h in data["hooks"]]
            kwargs["shards"] = [
                ShardRecord(**{**s, "end_state": PackerState(**s["end_state"])}) for s in data["shards"]
            ]
            manifest = cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise StoreFormatError(f"{where}: malformed manifest ({exc})") from exc
        manifest.validate(where)
        return manifest

    def validate(self, where: str = MANIFEST_NAME) -> None:
        """Structural checks that need no shard I/O."""
        if self.dtype not in STORE_DTYPES:
            raise StoreFormatError(f"{where}: unknown store dtype {self.dtype!r}")
        if self.context_length <= 0 or self.shard_rows <= 0:
            raise StoreFormatError(f"{where}: context_length and shard_rows must be positive")
        expected_first_row = 0
        per_stream = [0] * self.streams
        for index, shard in enumerate(self.shards):
            if not 0 <= shard.stream < self.streams:
                raise StoreFormatError(f"{where}: shard {index} names stream {shard.stream} of {self.streams}")
            expected = shard_file_name(per_stream[shard.stream], shard.stream, self.streams)
            per_stream[shard.stream] += 1
            if shard.file != expected:
                # Also rejects absolute paths and '..': a manifest can never point outside its store.
                raise StoreFormatError(
                    f"{where}: shard {index} is named {shard.file!r}, expected "
                    f"{expected!r}; the manifest was edited or is corrupt"
                )
            if shard.first_row != expected_first_row or shard.rows <= 0:
                raise StoreFormatError(f"{where}: shard {index} has inconsistent row counts")
            expected_first_row += shard.rows


def read_manifest(store: Path, name: str = MANIFEST_NAME) -> Manifest:
    path = Path(store) / name
    if not path.is_file():
        if name == MANIFEST_NAME and any(Path(store).glob("manifest.stream-*.json")):
            raise FileNotFoundError(
                f"{store} is a multi-process harvest that has not finished: rerun the same torchrun "
                "command to complete it."
            )
        raise FileNotFoundError(
            f"{store} is not an activation store (no {MANIFEST_NAME}). Create one with `interp-sae harvest --out DIR`."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{path}: not valid JSON ({exc})") from exc
    return Manifest.from_json(data, where=str(path))


def write_manifest(store: Path, manifest: Manifest, name: str = MANIFEST_NAME) -> None:
    write_json_atomic(Path(store) / name, manifest.to_json())
