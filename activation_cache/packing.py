"""Pack tokenised documents into fixed-length rows, each starting with BOS.

Documents are laid back to back; a document that starts inside a row is preceded by a BOS
separator, and one that does not fit continues in the next row (after that row's BOS).
BOS, separators and end-of-corpus padding get ``doc_id = -1`` so readers can leave them out
of training data while keeping them addressable.

The packer is resumable: every row carries the ``PackerState`` after it, and packing from
that state yields exactly the rows an uninterrupted run would have produced next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from queue import Full, Queue
from typing import Any, TypeVar

import numpy as np

from .store_format import PackerState

Tokenize = Callable[[list[str]], list[list[int]]]
T = TypeVar("T")


@dataclass
class PackedRows:
    """A block of packed rows, as numpy arrays of shape [rows, ctx]."""

    token_ids: np.ndarray  # int32
    doc_ids: np.ndarray  # int64
    doc_positions: np.ndarray  # int32
    end_state: PackerState


def _tokenized_documents(
    documents: Iterable[tuple[int, str]], tokenize: Tokenize, chunk: int
) -> Iterator[tuple[int, list[int]]]:
    """Tokenise in chunks (fast tokenizers parallelise a batch), yield one document at a time.
    Blank documents become empty: whitespace alone is not worth an activation."""
    pending: list[tuple[int, str]] = []
    for index, text in documents:
        pending.append((index, text if text.strip() else ""))
        if len(pending) == chunk:
            yield from zip((i for i, _ in pending), tokenize([t for _, t in pending]))
            pending = []
    if pending:
        yield from zip((i for i, _ in pending), tokenize([t for _, t in pending]))


def pack_rows(
    documents: Iterable[tuple[int, str]],
    tokenize: Tokenize,
    *,
    context_length: int,
    bos_id: int,
    pad_id: int,
    start: PackerState = PackerState(),
    tokenize_chunk: int = 64,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, PackerState]]:
    """Yield ``(token_ids, doc_ids, doc_positions, state_after)`` per row.

    ``documents`` must begin at document ``start.doc``; its first ``start.offset`` tokens
    were packed already and are skipped.
    """
    docs = _tokenized_documents(documents, tokenize, tokenize_chunk)
    doc_index, tokens, offset = start.doc, None, start.offset
    first = True
    while True:
        row_tokens = np.full(context_length, pad_id, dtype=np.int32)
        row_docs = np.full(context_length, -1, dtype=np.int64)
        row_pos = np.full(context_length, -1, dtype=np.int32)
        row_tokens[0] = bos_id
        filled = 1
        while filled < context_length:
            if tokens is None or offset >= len(tokens):
                nxt = next(docs, None)
                if nxt is None:
                    break
                doc_index, tokens = nxt
                offset = start.offset if first else 0
                first = False
                if offset >= len(tokens):
                    continue  # empty document, or one already fully packed before a resume
                if filled > 1:  # a document starting mid-row gets a BOS separator
                    row_tokens[filled] = bos_id
                    filled += 1
                    if filled == context_length:
                        break
            take = min(context_length - filled, len(tokens) - offset)
            row_tokens[filled : filled + take] = tokens[offset : offset + take]
            row_docs[filled : filled + take] = doc_index
            row_pos[filled : filled + take] = np.arange(offset, offset + take, dtype=np.int32)
            filled += take
            offset += take
        if filled == 1:
            return  # corpus exhausted: no partial row without any document token
        yield row_tokens, row_docs, row_pos, PackerState(doc=doc_index, offset=offset)
        if filled < context_length:
            return


def pack_blocks(
    rows: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, PackerState]], block_rows: int
) -> Iterator[PackedRows]:
    """Group rows into blocks of ``block_rows`` (the last one may be shorter)."""
    while True:
        chunk = [row for _, row in zip(range(block_rows), rows)]
        if not chunk:
            return
        yield PackedRows(
            token_ids=np.stack([r[0] for r in chunk]),
            doc_ids=np.stack([r[1] for r in chunk]),
            doc_positions=np.stack([r[2] for r in chunk]),
            end_state=chunk[-1][3],
        )


def blocks_until(
    rows: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, PackerState]],
    produced: int,
    target_rows: int,
    block_rows: int,
) -> Iterator[PackedRows]:
    """Blocks of ``block_rows`` rows from row ``produced`` on, the last one cut at ``target_rows``;
    stops early when the rows run out (the last block is then short)."""
    while produced < target_rows:
        wanted = min(block_rows, target_rows - produced)
        block = next(pack_blocks(rows, wanted), None)
        if block is None:
            return
        yield block
        produced += len(block.token_ids)
        if len(block.token_ids) < wanted:
            return


def prefetched(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """`items`, produced up to `depth` ahead by a background thread.

    Reading the corpus, tokenising (the fast tokenizer releases the GIL and uses every core) and
    packing the next blocks then overlap the forward pass of this one, which on a GPU is faster
    than they are. An exception in the producer is raised here; closing this generator stops it.
    """
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(queue, ("item", item), stop):
                    return
            _put(queue, ("end", None), stop)
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(queue, ("error", exc), stop)

    producer = threading.Thread(target=produce, name="interp-sae-packer", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        producer.join()


def _put(queue: Queue, entry: tuple[str, Any], stop: threading.Event) -> bool:
    """Put unless the consumer has stopped; False if it has."""
    while not stop.is_set():
        try:
            queue.put(entry, timeout=0.1)
            return True
        except Full:
            continue
    return False
