"""The float8_e4m3 store: one byte an element plus a float32 scale per vector, decoded for every
reader; its reconstruction error recorded per hook; refused by a reader of an older format."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dictionaries as D
from activation_cache import (
    ActivationStore,
    HarvestConfig,
    ShuffledBatches,
    Split,
    StoreFormatError,
    harvest,
    store_format,
)
from activation_cache.store_format import safetensors_layout
from activation_cache.vector_codec import FP8_E4M3_MAX, encode
from interp_sae.train_from_store import DataConfig, dictionary_configs, train_from_store

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
CLI = [sys.executable, "-m", "interp_sae.cli"]


def config(out, corpus, **overrides):
    settings = dict(out=str(out), model="tiny-pythia", hooks=HOOKS, dataset=str(corpus), tokens=1600,
                    context_length=16, shard_tokens=160, batch_size=4, store_dtype="float8_e4m3", device="cpu")  # fmt: skip
    return HarvestConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_lm, text_corpus):
    """The same tokens harvested into a float32 store and a float8_e4m3 store."""
    root = tmp_path_factory.mktemp("compressed")
    for dtype in ("float32", "float8_e4m3"):
        harvest(config(root / dtype, text_corpus, store_dtype=dtype), model=tiny_lm, progress=False)
    return ActivationStore(root / "float32"), ActivationStore(root / "float8_e4m3")


def test_encoding_keeps_each_vectors_largest_element_and_zero_vectors():
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0], [1e-30, 0, 0, -4e-30]])
    encoded = encode(x, torch.float8_e4m3fn)
    assert encoded.values.dtype == torch.float8_e4m3fn and encoded.scale is not None
    assert encoded.scale.dtype == torch.float32 and encoded.scale[1] == 0
    assert encoded.values.float().abs().amax(-1).tolist() == [FP8_E4M3_MAX, 0.0, FP8_E4M3_MAX]
    decoded = encoded.decode()
    assert decoded.dtype == torch.float32 and (decoded[1] == 0).all()
    # 3, -2, 1 and 0.5 are each exact in e4m3 once scaled by 448 / 3 … up to the scale's own rounding
    torch.testing.assert_close(decoded[0], x[0], rtol=2**-4, atol=0)
    torch.testing.assert_close(decoded[2], x[2], rtol=2**-4, atol=0)  # tiny vectors keep their precision
    # an unscaled dtype is a plain cast, and NaN survives encoding so the harvest can see it
    assert torch.equal(encode(x, torch.bfloat16).decode(), x.to(torch.bfloat16).float())
    assert torch.isnan(encode(torch.tensor([[1.0, float("nan")]]), torch.float8_e4m3fn).decode()).all()


def test_a_random_vectors_relative_error_is_that_of_three_mantissa_bits():
    x = torch.randn(4096, 512, generator=torch.Generator().manual_seed(0))
    decoded = encode(x, torch.float8_e4m3fn).decode()
    error = float((x - decoded).pow(2).sum() / x.pow(2).sum())
    assert 1e-4 < error < 2**-8  # rounding to 3 mantissa bits: ≤ 2^-4 relative per element


def test_shards_hold_fp8_vectors_and_float32_scales_in_half_of_bfloat16s_bytes(stores):
    _, fp8 = stores
    path = fp8.root / fp8.manifest.shards[0].file
    layout = safetensors_layout(path.read_bytes())
    for hook in HOOKS:
        assert layout[hook].dtype == "F8_E4M3" and layout[f"{hook}.scale"].dtype == "F32"
        assert layout[f"{hook}.scale"].shape == (160,)
        stored = layout[hook].end - layout[hook].start + layout[f"{hook}.scale"].end - layout[f"{hook}.scale"].start
        assert stored == 160 * (32 + 4)  # bfloat16: 160 × 64
    loaded = load_file(path)  # safetensors' own reader
    assert loaded[HOOKS[0]].dtype == torch.float8_e4m3fn
    assert torch.equal(loaded[HOOKS[0]].float() * loaded[f"{HOOKS[0]}.scale"][:, None], fp8.vectors(0, HOOKS[0]))
    assert fp8.manifest.format_version == store_format.FORMAT_VERSION == 3 and fp8.verify() == []


def test_every_reader_gets_the_decoded_vectors(stores):
    exact, fp8 = stores
    hook = HOOKS[0]
    documents = [torch.from_numpy(fp8.tokens(i).doc_ids.reshape(-1) >= 0) for i in range(fp8.num_shards)]
    decoded = torch.cat([fp8.vectors(i, hook)[keep] for i, keep in enumerate(documents)])
    original = torch.cat([exact.vectors(i, hook)[keep] for i, keep in enumerate(documents)])
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, original, rtol=2**-4, atol=float(original.abs().max()) * 2**-9)
    batches = torch.cat(list(ShuffledBatches(fp8, hook, 64, side="all", seed=1, window_bytes=1).batches(0)))
    assert batches.dtype == torch.float32 and torch.equal(_sorted_rows(batches), _sorted_rows(decoded))
    chunks = list(fp8.iter_split(hook, "all", Split()))
    assert torch.equal(torch.cat([c.vectors for c in chunks]), decoded)
    index = int(chunks[2].indices[5])
    assert torch.equal(fp8.activations(hook, [index])[0], chunks[2].vectors[5])
    stats = fp8.statistics(hook, side="all")
    torch.testing.assert_close(stats.mean, decoded.double().mean(0))


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    return x[torch.from_numpy(np.lexsort(x.numpy().T[::-1]))]


def test_the_manifest_records_each_hooks_relative_error_over_document_tokens(stores):
    exact, fp8 = stores
    for hook in HOOKS:
        error, norm = 0.0, 0.0
        for i in range(fp8.num_shards):
            keep = torch.from_numpy(fp8.tokens(i).doc_ids.reshape(-1) >= 0)
            x, x_hat = exact.vectors(i, hook)[keep].double(), fp8.vectors(i, hook)[keep].double()
            error += float((x - x_hat).pow(2).sum())
            norm += float(x.pow(2).sum())
        recorded = fp8.manifest.reconstruction_error[hook]
        assert recorded == pytest.approx(error / norm, rel=1e-4) and 1e-5 < recorded < 1e-2
        assert exact.manifest.reconstruction_error[hook] == 0.0
    totals = json.loads((fp8.root / "manifest.json").read_text())["totals"]
    assert totals["reconstruction_error"] == fp8.manifest.reconstruction_error


def test_an_extended_fp8_harvest_equals_a_direct_one_errors_included(tmp_path, tiny_lm, text_corpus):
    harvest(config(tmp_path / "grown", text_corpus, tokens=480), model=tiny_lm, progress=False)
    harvest(config(tmp_path / "grown", text_corpus, tokens=960), model=tiny_lm, progress=False)
    harvest(config(tmp_path / "direct", text_corpus, tokens=960), model=tiny_lm, progress=False)
    grown, direct = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("grown", "direct"))
    assert grown["shards"] == direct["shards"] and grown["totals"] == direct["totals"]


def test_an_older_reader_refuses_a_version_3_store_and_says_to_upgrade(stores, monkeypatch):
    _, fp8 = stores
    monkeypatch.setattr(store_format, "FORMAT_VERSION", 2)
    monkeypatch.setattr(store_format, "READABLE_VERSIONS", (1, 2))
    with pytest.raises(
        StoreFormatError, match=r"store format version 3 is newer than this interp-sae understands \(2\)\. Upgrade"
    ):
        ActivationStore(fp8.root)


def test_a_version_2_store_reads_with_no_recorded_error(stores, tmp_path):
    exact, _ = stores
    manifest = json.loads((exact.root / "manifest.json").read_text())
    manifest["format_version"] = 2
    for shard in manifest["shards"]:
        del shard["reconstruction"]
    (tmp_path / "shards").symlink_to(exact.root / "shards")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    older = ActivationStore(tmp_path)
    assert older.manifest.reconstruction_error == {hook: None for hook in HOOKS}
    assert torch.equal(older.vectors(1, HOOKS[0]), exact.vectors(1, HOOKS[0])) and older.verify() == []


def test_a_dictionary_trains_on_an_fp8_store_and_records_its_dtype(stores, tmp_path):
    _, fp8 = stores
    configs = dictionary_configs(["sae_topk"], [16], d=32, overrides={"sae_topk": {"k": 4}})
    train = D.TrainConfig(epochs=1, device="cpu", progress=False, prepare_vectors=256, curve_vectors=64)
    result = train_from_store(fp8.root, configs, tmp_path, train, DataConfig(hook=HOOKS[0], batch_size=64))
    assert np.isfinite(result.metrics["sae_topk"]["fvu_deterministic"]) and result.metrics["sae_topk"]["l0_mean"] == 4
    assert D.load_dictionary(tmp_path / "sae_topk").metadata["harvest"]["dtype"] == "float8_e4m3"


def test_verify_reports_each_hooks_error_and_names_a_damaged_scale(stores, tmp_path):
    _, fp8 = stores
    copy = tmp_path / "store"
    shutil.copytree(fp8.root, copy)
    verified = subprocess.run([*CLI, "verify", str(copy)], capture_output=True, text=True)
    assert verified.returncode == 0 and "all shards intact" in verified.stdout
    error = fp8.manifest.reconstruction_error[HOOKS[0]]
    assert f"{HOOKS[0]}: float8_e4m3, relative error of the stored vectors {error:.2e}" in verified.stdout
    victim = copy / fp8.manifest.shards[2].file
    data = bytearray(victim.read_bytes())
    data[safetensors_layout(bytes(data))[f"{HOOKS[1]}.scale"].start + 5] ^= 0x10
    victim.write_bytes(bytes(data))
    damaged = subprocess.run([*CLI, "verify", str(copy)], capture_output=True, text=True)
    assert damaged.returncode == 1 and "shard 2" in damaged.stderr and "--repair" in damaged.stderr
    with pytest.raises(StoreFormatError, match=rf"shard 2 .*checksum mismatch in '{HOOKS[1]}\.scale'"):
        ActivationStore(copy).vectors(2, HOOKS[1])
