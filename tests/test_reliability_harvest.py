"""Faults injected for real into a harvest: a full disk, NaN activations, a tampered manifest."""

import json
import os
import subprocess
import sys

import pytest
import torch

from activation_cache import ActivationStore, HarvestConfig, HarvestError, StoreFormatError, harvest
from activation_cache.writer import ShardWriteError


def config(out, corpus, **overrides):
    settings = dict(
        out=str(out),
        model="tiny-pythia",
        hooks=["blocks.1.hook_resid_post"],
        dataset=str(corpus),
        tokens=3200,
        context_length=16,
        shard_tokens=320,
        batch_size=4,
        store_dtype="float32",
        device="cpu",
    )
    return HarvestConfig(**{**settings, **overrides})


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 160 KiB tmpfs: the disk fills up for real. Needs root (CI and the dev machines run as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def _shards(root):
    return {p.name: p.read_bytes() for p in sorted((root / "shards").iterdir())}


def test_a_full_disk_stops_cleanly_and_the_same_command_resumes(small_filesystem, tmp_path, tiny_lm, text_corpus):
    cfg = config(small_filesystem / "store", text_corpus)
    with pytest.raises(ShardWriteError, match=r"no space left .*free some space and rerun the same command to resume"):
        harvest(cfg, model=tiny_lm, progress=False)
    store = ActivationStore(cfg.out)
    assert 0 < len(store.manifest.shards) < 10 and not store.manifest.complete
    assert store.verify() == []  # every listed shard intact
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_filesystem)], check=True)  # space freed
    harvest(cfg, model=tiny_lm, progress=False)
    harvest(config(tmp_path / "straight", text_corpus), model=tiny_lm, progress=False)
    assert _shards(small_filesystem / "store") == _shards(tmp_path / "straight")


def _nan_at_position_5(tensor, hook):
    if tensor.shape[1] > 5:  # (the harvest first probes the hook widths with a 2-token row)
        tensor[:, 5] = float("nan")  # position 5 of every row in the batch
    return tensor


def test_nan_activations_stop_with_their_location_or_are_skipped_and_counted(tmp_path, tiny_lm, text_corpus):
    with tiny_lm.bridge.hooks(fwd_hooks=[("blocks.1.hook_out", _nan_at_position_5)]):
        with pytest.raises(
            HarvestError,
            match=r"non-finite activation at hook 'blocks\.1\.hook_resid_post', "
            r"row 0, position 5 \(document 0\).*--on-nonfinite skip",
        ):
            harvest(config(tmp_path / "stop", text_corpus, tokens=320), model=tiny_lm, progress=False)
        manifest = harvest(
            config(tmp_path / "skip", text_corpus, tokens=320, on_nonfinite="skip"), model=tiny_lm, progress=False
        )
    assert manifest.nonfinite_positions == 20  # one position in each of the 20 rows
    skipped = ActivationStore(tmp_path / "skip")
    assert (skipped.tokens(0).doc_ids[:, 5] == -1).all()
    vectors = skipped.vectors(0, "blocks.1.hook_resid_post").view(20, 16, -1)
    assert (vectors[:, 5] == 0).all() and torch.isfinite(vectors).all()
    assert json.loads((tmp_path / "skip/manifest.json").read_text())["totals"]["nonfinite_positions"] == 20


def test_a_float16_overflow_is_caught_after_the_cast(tmp_path, tiny_lm, text_corpus):
    def huge(tensor, hook):
        return tensor * 1e6  # fine in float32, infinite in float16

    with tiny_lm.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", huge)]):
        with pytest.raises(HarvestError, match="non-finite activation"):
            harvest(config(tmp_path, text_corpus, store_dtype="float16", tokens=64), model=tiny_lm, progress=False)


def test_a_manifest_that_points_outside_the_store_or_is_newer_is_refused(tmp_path, tiny_lm, text_corpus):
    harvest(config(tmp_path, text_corpus, tokens=640), model=tiny_lm, progress=False)
    original = json.loads((tmp_path / "manifest.json").read_text())

    tampered = json.loads(json.dumps(original))
    tampered["shards"][1]["file"] = "../../etc/passwd"
    (tmp_path / "manifest.json").write_text(json.dumps(tampered))
    with pytest.raises(
        StoreFormatError, match=r"shard 1 is named '\.\./\.\./etc/passwd', expected 'shards/shard-000001\.safetensors'"
    ):
        ActivationStore(tmp_path)

    newer = {**original, "format_version": 99}
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(StoreFormatError, match="format version 99 is newer than this interp-sae understands.*Upgrade"):
        ActivationStore(tmp_path)


def test_non_utf8_text_is_named_with_a_fix(tmp_path, tiny_lm):
    from activation_cache import CorpusError

    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt is not UTF-8 \(byte 3.*iconv -f latin1 -t utf-8"):
        harvest(config(tmp_path / "out", tmp_path / "latin1.txt"), model=tiny_lm, progress=False)


def test_the_real_defaults_offline_say_what_to_do(tmp_path):
    """Pythia-70m-deduped on Pile-10k is the default; with no network it must fail fast and helpfully."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "interp_sae.cli", "harvest", "--out", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert "cannot load model 'EleutherAI/pythia-70m-deduped'" in result.stderr
    assert "builtin:smollm2" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    code = (
        "from activation_cache import CorpusSpec, iter_documents\n"
        "next(iter_documents(CorpusSpec('NeelNanda/pile-10k')))"
    )
    dataset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "CorpusError: cannot open dataset 'NeelNanda/pile-10k'" in dataset.stderr
    assert "Offline? Use a local file or folder, or 'builtin:pydoc'" in dataset.stderr
