"""The store's file format: shards are real safetensors files with the checksums the manifest
records, and version-1 stores (sha256 only) still read."""

import hashlib
import json

import pytest
import torch
import xxhash
from safetensors.torch import load_file

from activation_cache import ActivationStore, HarvestConfig, ShardIntegrityError, ShuffledBatches, Split, harvest
from activation_cache.store_format import safetensors_layout
from activation_cache.writer import write_shard_file

HOOK = "blocks.1.hook_resid_post"


def test_a_shard_is_a_safetensors_file_with_the_recorded_checksums(tmp_path):
    tensors = {
        HOOK: torch.randn(64, 8).to(torch.bfloat16),
        "token_ids": torch.arange(32, dtype=torch.int32).view(4, 8),
        "doc_ids": torch.arange(32, dtype=torch.int64).view(4, 8) - 3,
        "empty": torch.zeros(0, 5),
    }
    path = tmp_path / "shard.safetensors"
    size, sha256, checksums = write_shard_file(path, tensors, 0)
    payload = path.read_bytes()
    assert size == len(payload) and sha256 == hashlib.sha256(payload).hexdigest()
    loaded = load_file(path)  # safetensors' own reader
    assert sorted(loaded) == sorted(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    layout = safetensors_layout(payload)
    assert checksums == {name: xxhash.xxh3_64_hexdigest(payload[s.start : s.end]) for name, s in layout.items()}
    assert all(span.start % torch.tensor([], dtype=tensors[name].dtype).element_size() == 0
               for name, span in layout.items())  # fmt: skip


@pytest.fixture
def version_1_store(tmp_path, tiny_lm, text_corpus):
    """A store as interp-sae 0.1 wrote it: format version 1, no per-tensor checksums."""
    config = HarvestConfig(out=str(tmp_path), model="tiny-pythia", hooks=[HOOK], dataset=str(text_corpus),
                           tokens=800, context_length=16, shard_tokens=160, device="cpu")  # fmt: skip
    harvest(config, model=tiny_lm, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 1
    for shard in manifest["shards"]:
        del shard["checksums"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_version_1_store_reads_and_is_checked_with_sha256(version_1_store):
    store = ActivationStore(version_1_store)
    assert store.manifest.format_version == 1 and store.verify() == []
    batches = list(ShuffledBatches(store, HOOK, 32, side="all", split=Split()).batches(0))
    assert sum(len(b) for b in batches) == store.manifest.valid_tokens
    victim = version_1_store / store.manifest.shards[1].file
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match=r"shard 1 .* checksum mismatch \(sha256 .*--repair"):
        list(ShuffledBatches(ActivationStore(version_1_store), HOOK, 32, side="all").batches(0))
