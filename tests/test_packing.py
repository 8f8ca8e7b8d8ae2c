import numpy as np
import pytest

from activation_cache.packing import pack_blocks, pack_rows
from activation_cache.store_format import PackerState

BOS, PAD = 0, 99
DOCS = {0: [5, 6, 7], 1: [], 2: [8, 9, 10, 11, 12, 13, 14], 3: [15]}


def fake_tokenize(texts):
    return [DOCS[int(t)] for t in texts]


def documents(start=0):
    return ((i, str(i)) for i in sorted(DOCS) if i >= start)


def pack(start=PackerState(), ctx=5):
    return list(
        pack_rows(
            documents(start.doc),
            fake_tokenize,
            context_length=ctx,
            bos_id=BOS,
            pad_id=PAD,
            start=start,
            tokenize_chunk=2,
        )
    )


def test_rows_start_with_bos_and_documents_get_separators_and_continue_across_rows():
    rows = pack()
    assert [r[0].tolist() for r in rows] == [
        [BOS, 5, 6, 7, BOS],  # doc 0, then a separator before doc 2 (doc 1 is empty)
        [BOS, 8, 9, 10, 11],  # doc 2 continues after the row's own BOS
        [BOS, 12, 13, 14, BOS],
        [BOS, 15, PAD, PAD, PAD],  # end of corpus: padded
    ]
    assert [r[1].tolist() for r in rows] == [
        [-1, 0, 0, 0, -1],
        [-1, 2, 2, 2, 2],
        [-1, 2, 2, 2, -1],
        [-1, 3, -1, -1, -1],
    ]
    assert [r[2].tolist() for r in rows] == [
        [-1, 0, 1, 2, -1],
        [-1, 0, 1, 2, 3],
        [-1, 4, 5, 6, -1],
        [-1, 0, -1, -1, -1],
    ]


def test_packing_from_any_recorded_state_reproduces_the_remaining_rows():
    rows = pack()
    for k in range(len(rows)):
        resumed = pack(start=rows[k][3])
        assert len(resumed) == len(rows) - k - 1
        for a, b in zip(resumed, rows[k + 1 :]):
            assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
            assert a[3] == b[3]


def test_blocks_group_rows_and_carry_the_last_state():
    blocks = list(pack_blocks(iter(pack()), 3))
    assert [len(b.token_ids) for b in blocks] == [3, 1]
    assert blocks[0].end_state == PackerState(doc=3, offset=0)  # separator placed, doc 3 next
    assert blocks[0].token_ids.dtype == np.int32 and blocks[0].doc_ids.dtype == np.int64


def test_prefetched_keeps_order_and_raises_the_producers_error():
    from activation_cache.packing import prefetched

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("corpus file vanished")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="corpus file vanished"):
        next(items)


def test_closing_prefetched_stops_the_producer_within_its_depth():
    import threading

    from activation_cache.packing import prefetched

    taken = []

    def counted():
        for i in range(1000):
            taken.append(i)
            yield i

    before = threading.active_count()
    items = prefetched(counted(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # joins the producer thread
    assert threading.active_count() == before
    assert len(taken) <= 3 + 2 + 1  # consumed, queued, and the one it was holding


def test_blocks_until_cuts_the_last_block_at_the_target_and_stops_when_rows_run_out():
    from activation_cache.packing import blocks_until

    def rows(n):
        for i in range(n):
            yield np.full(4, i), np.full(4, i), np.full(4, i), PackerState(doc=i, offset=0)

    sizes = [len(b.token_ids) for b in blocks_until(rows(100), produced=3, target_rows=20, block_rows=5)]
    assert sizes == [5, 5, 5, 2]
    sizes = [len(b.token_ids) for b in blocks_until(rows(7), produced=0, target_rows=20, block_rows=5)]
    assert sizes == [5, 2]
