"""A background thread that commits shards to disk while the model computes the next ones.

Each shard is serialised to bytes, checksummed (sha256 of the file, xxh3 of each tensor),
and committed with `interp_sae.atomic.write_atomic`; only then is it appended to the manifest,
which is itself replaced atomically. A kill at any moment therefore leaves every listed shard complete and intact,
plus at most one stray temporary file that the next run removes.
"""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from interp_sae.atomic import write_atomic
from interp_sae.errors import InterpSAEError

from .store_format import (
    Manifest,
    PackerState,
    ShardRecord,
    partial_manifest_name,
    parts_checksums,
    safetensors_parts,
    shard_file_name,
    write_manifest,
)

_STOP = object()


class ShardWriteError(InterpSAEError, RuntimeError):
    """Writing a shard failed; the shards already listed in the manifest are intact."""


class ShardWriter:
    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        on_written: Callable[[ShardRecord], None],
        stream: int = 0,
        queue_size: int = 2,
    ):
        self.root = Path(root)
        self.manifest = manifest
        self.stream = stream
        self.manifest_name = partial_manifest_name(stream, manifest.streams)
        self.on_written = on_written
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def submit(
        self,
        tensors: dict[str, torch.Tensor],
        rows: int,
        valid_tokens: int,
        end_state: PackerState,
        nonfinite_positions: int = 0,
        reconstruction: dict[str, list[float]] | None = None,
    ) -> None:
        """Queue a shard (blocks while the queue is full, which bounds memory)."""
        self.raise_if_failed()
        self._queue.put((tensors, rows, valid_tokens, end_state, nonfinite_positions, reconstruction or {}))

    def close(self) -> None:
        """Wait for every queued shard to be committed."""
        self._queue.put(_STOP)
        self._thread.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue  # drain without writing: later shards must not land after a gap
            try:
                self._commit(*item)
            except BaseException as exc:  # surfaced to the harvest loop by raise_if_failed
                self.error = exc

    def _commit(
        self,
        tensors: dict[str, torch.Tensor],
        rows: int,
        valid_tokens: int,
        end_state: PackerState,
        nonfinite_positions: int,
        reconstruction: dict[str, list[float]],
    ) -> None:
        index = len(self.manifest.shards)
        name = shard_file_name(index, self.stream, self.manifest.streams)
        size, digest, checksums = write_shard_file(self.root / name, tensors, index)
        record = ShardRecord(
            file=name,
            rows=rows,
            first_row=self.manifest.rows,
            valid_tokens=valid_tokens,
            bytes=size,
            sha256=digest,
            end_state=end_state,
            nonfinite_positions=nonfinite_positions,
            stream=self.stream,
            checksums=checksums,
            reconstruction=reconstruction,
        )
        self.manifest.shards.append(record)
        try:
            write_manifest(self.root, self.manifest, self.manifest_name)
        except OSError as exc:
            self.manifest.shards.pop()  # the shard file stays, unlisted; the next run rewrites it
            raise ShardWriteError(
                f"cannot update the manifest after shard {index}: {exc}. Earlier shards are intact; "
                "rerun the same command to resume."
            ) from exc
        self.on_written(record)


def write_shard_file(path: Path, tensors: dict[str, torch.Tensor], index: int) -> tuple[int, str, dict[str, str]]:
    """Commit a shard atomically. Returns (bytes, sha256 of the file, xxh3 of each tensor).

    The file is written straight from the tensors' memory (`safetensors_parts`: no serialised
    copy), and the checksums are computed from the same memory in a second thread while the first
    writes and fsyncs (hashlib and xxhash release the GIL), so the writer costs about what the
    disk costs. Python's own writes keep the OSError's errno, so a full disk is told apart."""
    head, blobs = safetensors_parts(tensors)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(head)
            for _, data in blobs:
                handle.write(data)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-checksums") as pool:
        sums = pool.submit(parts_checksums, head, blobs)
        try:
            write_atomic(path, write)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise ShardWriteError(
                    f"no space left writing {path} ({exc.strerror}). Shards before {index} are intact; "
                    "free some space and rerun the same command to resume."
                ) from exc
            raise ShardWriteError(f"cannot write {path}: {exc}") from exc
        sha256, checksums = sums.result()
    return len(head) + sum(len(data) for _, data in blobs), sha256, checksums
