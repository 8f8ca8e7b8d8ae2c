"""Top examples trace back to the right text, and their window activations are the dictionary's."""

import json

import torch
from conftest import HOOK

from interp_sae.inspect_contexts import MARK_CLOSE, MARK_OPEN, top_contexts
from interp_sae.inspect_stats import feature_statistics


def test_contexts_decode_to_the_right_text_with_the_right_activations(tiny_store, vaease, tiny_tokenizer, text_corpus):
    texts = [json.loads(line)["text"] for line in text_corpus.read_text().splitlines()]
    window = 3
    stats = feature_statistics(tiny_store, vaease, HOOK, side="validation", top_k=3)
    contexts = top_contexts(tiny_store, vaease, HOOK, stats.top_indices, window, tiny_store.tokenizer())
    checked = 0
    firing = [j for j, indices in enumerate(stats.top_indices) if indices]
    for feature in firing[:2] + firing[-2:]:
        for index, context in zip(stats.top_indices[feature], contexts[feature]):
            record = tiny_store.lookup(index, window)
            assert context["index"] == index and context["token_ids"] == record.context_token_ids
            assert context["text"] == tiny_tokenizer.decode(record.context_token_ids)
            center = context["center"]
            assert context["token_ids"][center] == record.token_id
            assert context["tokens"][center] == tiny_tokenizer.decode([record.token_id])
            assert MARK_OPEN + context["tokens"][center] + MARK_CLOSE in context["marked_text"]
            # The document's own tokens in the window are a piece of that document's text.
            own = [t for t, d in zip(record.context_token_ids, record.context_doc_ids) if d == record.doc_id]
            assert tiny_tokenizer.decode(own) in texts[record.doc_id]
            # Activation on every window token = encoding its stored vector; none at BOS/separators.
            window_indices = list(range(index - center, index - center + len(context["token_ids"])))
            expected = vaease.encode(tiny_store.activations(HOOK, window_indices))[:, feature]
            for value, want, doc in zip(context["activations"], expected.tolist(), record.context_doc_ids):
                assert (value is None) == (doc < 0)
                if value is not None:
                    assert abs(value - want) <= 1e-4 * max(1.0, abs(want))
            torch.testing.assert_close(torch.tensor(context["activation"]), expected[center], rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked >= 4
