import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activation_cache import (
    ActivationStore,
    CorpusError,
    HarvestConfig,
    HarvestError,
    HookError,
    ShuffledBatches,
    Split,
    harvest,
)
from activation_cache.harvest_guards import store_lock
from activation_cache.store_format import safetensors_layout

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]


def config(out, corpus, **overrides):
    settings = dict(
        out=str(out),
        model="tiny-pythia",
        hooks=HOOKS,
        dataset=str(corpus),
        tokens=2000,
        context_length=16,
        shard_tokens=160,
        batch_size=4,
        store_dtype="float32",
        device="cpu",
    )
    settings.update(overrides)
    return HarvestConfig(**settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_lm, text_corpus):
    out = tmp_path_factory.mktemp("store")
    harvest(config(out, text_corpus, tokens=100_000), model=tiny_lm, progress=False)
    return ActivationStore(out)


def test_store_holds_exactly_the_models_activations_for_the_packed_tokens(store, tiny_hf_model):
    manifest = store.manifest
    assert manifest.complete and manifest.stop_reason == "corpus_exhausted"
    assert [h.name for h in manifest.hooks] == HOOKS and manifest.hooks[0].d == 32
    assert len(manifest.shards) > 2 and all(s.rows == 10 for s in manifest.shards[:-1])
    for index in (0, len(manifest.shards) - 1):
        ids = torch.from_numpy(store.tokens(index).token_ids).long()
        assert (ids[:, 0] == 0).all()  # every row starts with BOS, which is id 0 as in Pythia
        with torch.no_grad():
            hidden = tiny_hf_model(ids, output_hidden_states=True).hidden_states
        stored = store.vectors(index, "blocks.1.hook_resid_post")
        torch.testing.assert_close(stored, hidden[2].reshape(-1, 32), rtol=0, atol=1e-5)


def test_tokens_trace_back_to_their_document_text(store, tiny_tokenizer, text_corpus):
    texts = [json.loads(line)["text"] for line in text_corpus.read_text().splitlines()]
    for index in (17, 250, len(store) - 40):
        record = store.lookup(index, window=3)
        if record.doc_id < 0:
            continue
        doc_tokens = tiny_tokenizer(texts[record.doc_id], add_special_tokens=False)["input_ids"]
        assert doc_tokens[record.doc_position] == record.token_id
        offset = record.position - record.context_start
        assert record.context_token_ids[offset] == record.token_id
    record = store.lookup(16 * 3)  # position 0 of row 3: a BOS
    assert record.doc_id == -1 and record.token_id == 0


def test_every_document_token_is_stored_once_in_order(store, tiny_tokenizer, text_corpus):
    texts = [json.loads(line)["text"] for line in text_corpus.read_text().splitlines()]
    tokens, docs = [], []
    for i in range(store.num_shards):
        shard = store.tokens(i)
        keep = shard.doc_ids >= 0
        tokens += shard.token_ids[keep].tolist()
        docs += shard.doc_ids[keep].tolist()
    expected = [t for text in texts for t in tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert tokens == expected
    assert docs == sorted(docs) and set(docs) == set(range(30))
    assert store.manifest.valid_tokens == len(expected)


def test_shuffled_batches_cover_every_non_bos_vector_exactly_once(store):
    hook = HOOKS[0]
    everything = torch.cat(
        [
            store.vectors(i, hook)[torch.from_numpy(store.tokens(i).doc_ids.reshape(-1) >= 0)]
            for i in range(store.num_shards)
        ]
    )
    for window_bytes in (1 << 30, 1):  # one window (global shuffle); one shard per window
        source = ShuffledBatches(store, hook, batch_size=64, side="all", seed=3, window_bytes=window_bytes)
        batches = list(source.batches(epoch=0))
        assert len(batches) == source.num_batches(0) and all(len(b) == 64 for b in batches[:-1])
        seen = torch.cat(batches)
        assert seen.dtype == torch.float32 and len(seen) == len(everything)
        assert torch.equal(_sorted_rows(seen), _sorted_rows(everything))
        assert not torch.equal(seen, everything)  # actually shuffled
        # resuming at batch k yields exactly the rest of the epoch
        assert all(torch.equal(a, b) for a, b in zip(source.batches(0, start=5), batches[5:]))
        assert not torch.equal(torch.cat(list(source.batches(epoch=1))), seen)


def test_resuming_mid_epoch_with_uneven_windows_yields_exactly_the_rest(store):
    # One shard per window and a document-level split: windows hold different numbers of vectors,
    # so a later window can be smaller than what is left to skip; it must still be read.
    source = ShuffledBatches(store, HOOKS[0], batch_size=16, side="train", split=Split(0.3), window_bytes=1)
    assert len(set(source.shard_counts.tolist())) > 2
    everything = list(source.batches(epoch=2))
    for start in (1, 3, 7, 13, 20, 31, len(everything) - 1):
        assert all(torch.equal(a, b) for a, b in zip(source.batches(2, start=start), everything[start:], strict=True))


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    order = np.lexsort(x.numpy().T[::-1])
    return x[torch.from_numpy(order)]


def test_train_and_validation_split_whole_documents(store):
    train = ShuffledBatches(store, HOOKS[0], 10_000, side="train", split=Split(0.3))
    val = ShuffledBatches(store, HOOKS[0], 10_000, side="validation", split=Split(0.3))
    assert len(train) + len(val) == store.manifest.valid_tokens and len(val) > 0
    stats_all = store.statistics(HOOKS[0], side="all")
    assert stats_all.count == store.manifest.valid_tokens


def test_statistics_match_a_direct_computation(store):
    hook = HOOKS[0]
    x = torch.cat(
        [
            store.vectors(i, hook)[torch.from_numpy(store.tokens(i).doc_ids.reshape(-1) >= 0)]
            for i in range(store.num_shards)
        ]
    ).double()
    stats = store.statistics(hook, side="all")
    torch.testing.assert_close(stats.mean, x.mean(0))
    torch.testing.assert_close(stats.var, x.var(0, unbiased=False))
    assert stats.mean_norm == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-12)


def test_rerunning_a_finished_harvest_does_nothing_and_a_larger_budget_extends_it(tmp_path, tiny_lm, text_corpus):
    small = config(tmp_path / "s", text_corpus, tokens=500)
    harvest(small, model=tiny_lm, progress=False)
    first = (tmp_path / "s/manifest.json").read_text()
    harvest(small, model=tiny_lm, progress=False)
    assert (tmp_path / "s/manifest.json").read_text() == first
    harvest(config(tmp_path / "s", text_corpus, tokens=1000), model=tiny_lm, progress=False)
    harvest(config(tmp_path / "direct", text_corpus, tokens=1000), model=tiny_lm, progress=False)
    assert _shard_bytes(tmp_path / "s") == _shard_bytes(tmp_path / "direct")


def _shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").iterdir())}


def test_other_settings_into_the_same_folder_are_refused(tmp_path, tiny_lm, text_corpus):
    harvest(config(tmp_path, text_corpus, tokens=200), model=tiny_lm, progress=False)
    before = _shard_bytes(tmp_path)
    with pytest.raises(HarvestError, match=r"(?s)other settings.*hooks: store has .*blocks\.1\.hook_resid_post"):
        harvest(config(tmp_path, text_corpus, hooks=["blocks.2.hook_resid_post"]), model=tiny_lm, progress=False)
    with pytest.raises(HarvestError, match="context_length: store has 16, this run asks 32"):
        harvest(config(tmp_path, text_corpus, context_length=32), progress=False)  # refused before loading a model
    assert _shard_bytes(tmp_path) == before


def test_unknown_hooks_and_layers_are_named_with_the_valid_choices(tmp_path, tiny_lm, text_corpus):
    with pytest.raises(HookError, match=r"(?s)unknown hook 'blocks\.0\.hook_resid_pots'.*blocks\.0\.hook_resid_post"):
        harvest(config(tmp_path, text_corpus, hooks=["blocks.0.hook_resid_pots"]), model=tiny_lm, progress=False)
    with pytest.raises(HookError, match=r"\(did you mean 'blocks\.0\.hook_resid_post'\?\)"):
        harvest(config(tmp_path, text_corpus, hooks=["blocks.0.hook_resid_pots"]), model=tiny_lm, progress=False)
    with pytest.raises(HookError, match=r"layer 7 is out of range, the model has 3 layers \(blocks\.0 … blocks\.2\)"):
        harvest(config(tmp_path, text_corpus, hooks=["blocks.7.hook_resid_post"]), model=tiny_lm, progress=False)


def test_bad_sizes_and_contexts_are_refused_clearly(tmp_path, tiny_lm, text_corpus):
    with pytest.raises(HarvestError, match="tokens must be positive, got 0"):
        config(tmp_path, text_corpus, tokens=0)
    with pytest.raises(HarvestError, match="batch-size must be positive, got -1"):
        config(tmp_path, text_corpus, batch_size=-1)
    with pytest.raises(HarvestError, match="context-length 512 exceeds the model's 256 positions"):
        harvest(config(tmp_path, text_corpus, context_length=512), model=tiny_lm, progress=False)


def test_empty_corpus_and_missing_column_are_explained(tmp_path, tiny_lm):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "   "}\n')
    with pytest.raises(HarvestError, match="gave no tokens"):
        harvest(config(tmp_path / "a", empty), model=tiny_lm, progress=False)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"body": "hello"}\n')
    with pytest.raises(CorpusError, match=r"no text column 'text' \(found \['body'\]\); pass --text-column NAME"):
        harvest(config(tmp_path / "b", wrong), model=tiny_lm, progress=False)


def test_a_second_harvest_on_the_same_folder_is_refused_while_the_first_runs(tmp_path, tiny_lm, text_corpus):
    with store_lock(tmp_path):
        with pytest.raises(HarvestError, match=f"another harvest \\(pid \\d+\\) is writing to {tmp_path}"):
            harvest(config(tmp_path, text_corpus), model=tiny_lm, progress=False)
    # A lock file left by a dead process does not block: the kernel dropped its lock.
    assert (tmp_path / ".harvest.lock").exists()
    harvest(config(tmp_path, text_corpus, tokens=100), model=tiny_lm, progress=False)


@pytest.mark.parametrize("store_dtype", ["float32", "float8_e4m3"])
def test_a_damaged_shard_is_named_refused_and_repaired_alone(tmp_path, tiny_lm, text_corpus, store_dtype):
    cfg = config(tmp_path, text_corpus, tokens=600, store_dtype=store_dtype)
    harvest(cfg, model=tiny_lm, progress=False)
    intact = _shard_bytes(tmp_path)
    victim = tmp_path / "shards/shard-000001.safetensors"
    data = bytearray(victim.read_bytes())
    span = safetensors_layout(bytes(data))[HOOKS[0]]
    data[(span.start + span.end) // 2] ^= 0xFF  # one bit flipped in the middle of the hook's vectors
    victim.write_bytes(bytes(data))
    store = ActivationStore(tmp_path)
    problems = store.verify()
    assert len(problems) == 1 and "shard 1" in problems[0] and "checksum mismatch" in problems[0]
    with pytest.raises(ValueError, match=f"shard 1 .* is damaged: checksum mismatch in '{HOOKS[0]}'.*--repair"):
        list(ShuffledBatches(store, HOOKS[0], 32).batches(0))
    assert len(list(ShuffledBatches(store, HOOKS[1], 32).batches(0))) > 0  # the other hook's bytes are intact
    (tmp_path / "shards/shard-000002.safetensors").write_bytes(intact["shard-000002.safetensors"][:100])
    assert "truncated" in ActivationStore(tmp_path).verify()[1]
    before = json.loads((tmp_path / "manifest.json").read_text())
    harvest(cfg, model=tiny_lm, progress=False, repair=True)
    assert _shard_bytes(tmp_path) == intact
    assert ActivationStore(tmp_path).verify() == []
    assert json.loads((tmp_path / "manifest.json").read_text())["shards"] == before["shards"]  # errors included


def _run_harvest_script(model_folder, corpus, out, *kill, store_dtype="float32"):
    script = Path(__file__).parent / "harvest_script.py"
    args = [sys.executable, str(script), str(model_folder), str(corpus), str(out), *map(str, kill)]
    return subprocess.run([*args, "--store-dtype", store_dtype], capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted_store(tmp_path_factory, tiny_model_folder, text_corpus):
    """The uninterrupted harvest's folder, one per store dtype, made on first use."""
    stores: dict[str, Path] = {}

    def made(store_dtype: str) -> Path:
        if store_dtype not in stores:
            out = tmp_path_factory.mktemp(f"uninterrupted-{store_dtype}")
            done = _run_harvest_script(tiny_model_folder, text_corpus, out, store_dtype=store_dtype)
            assert done.returncode == 0, done.stderr
            stores[store_dtype] = out
        return stores[store_dtype]

    return made


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_on, nth, store_dtype",
    [
        ("shard-fsync", 3, "float32"),
        ("shard-rename", 2, "float32"),
        ("manifest-rename", 4, "float32"),
        ("shard-rename", 2, "float8_e4m3"),
    ],
)
def test_a_killed_harvest_resumes_to_the_same_store(
    tmp_path, tiny_model_folder, text_corpus, uninterrupted_store, kill_on, nth, store_dtype
):
    killed = _run_harvest_script(tiny_model_folder, text_corpus, tmp_path, kill_on, nth, store_dtype=store_dtype)
    assert killed.returncode == -9, killed.stderr
    partial = json.loads((tmp_path / "manifest.json").read_text())
    assert not partial["complete"] and 0 < len(partial["shards"]) < 8
    resumed = _run_harvest_script(tiny_model_folder, text_corpus, tmp_path, store_dtype=store_dtype)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = uninterrupted_store(store_dtype)
    assert _shard_bytes(tmp_path) == _shard_bytes(uninterrupted)
    manifest = lambda root: json.loads((root / "manifest.json").read_text())  # noqa: E731
    assert manifest(tmp_path)["shards"] == manifest(uninterrupted)["shards"]  # reconstruction sums included
    assert manifest(tmp_path)["totals"] == manifest(uninterrupted)["totals"]


def test_a_last_block_hook_stops_the_forward_pass_before_the_unembedding(tiny_lm, tiny_hf_model):
    from activation_cache.harvest import _forward

    ids = torch.tensor([[0, 5, 6, 7, 8], [0, 9, 10, 11, 12]])
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]  # the tiny model's last block is 2
    unembedded = []
    handle = tiny_lm.bridge.unembed.register_forward_hook(lambda *args: unembedded.append(1))
    try:
        acts = _forward(tiny_lm, ids, hooks, stop=3)
    finally:
        handle.remove()
    assert unembedded == []
    _, cache = tiny_lm.bridge.run_with_cache(ids, names_filter=hooks)
    for hook in hooks:
        torch.testing.assert_close(acts[hook], cache[hook], rtol=0, atol=0)
