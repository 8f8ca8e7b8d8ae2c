"""Real torchrun, 2 CPU processes: each harvests its own stream of documents; the store reads
like a single-process one and holds every document once."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from activation_cache import ActivationStore, ShuffledBatches

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "harvest_script.py"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}


def run(model, corpus, out, *kill, tokens=2000, nproc=2):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    args = [str(SCRIPT), str(model), str(corpus), str(out), *map(str, kill), "--tokens", str(tokens)]
    return subprocess.run(launcher + args, capture_output=True, text=True, env=ENV)


def documents(root):
    """doc id → its tokens in document order, read through the store's public API."""
    store, docs = ActivationStore(root), defaultdict(dict)
    for index in range(store.num_shards):
        shard = store.tokens(index)
        for doc, pos, token in zip(shard.doc_ids.ravel(), shard.doc_positions.ravel(), shard.token_ids.ravel()):
            if doc >= 0:
                assert pos not in docs[int(doc)], f"document {doc} position {pos} stored twice"
                docs[int(doc)][int(pos)] = int(token)
    return {doc: [tokens[p] for p in sorted(tokens)] for doc, tokens in docs.items()}


def test_two_processes_store_every_document_once(tmp_path, tiny_model_folder, text_corpus):
    assert (
        single := run(tiny_model_folder, text_corpus, tmp_path / "single", tokens=10**6, nproc=1)
    ).returncode == 0, single.stderr
    result = run(tiny_model_folder, text_corpus, tmp_path / "two", tokens=10**6)
    assert result.returncode == 0, result.stderr[-3000:]
    store = ActivationStore(tmp_path / "two")
    manifest = store.manifest
    assert manifest.complete and manifest.streams == 2 and {s.stream for s in manifest.shards} == {0, 1}
    assert store.verify() == []
    assert documents(tmp_path / "two") == documents(tmp_path / "single")  # each document once, whole
    assert (
        len(ShuffledBatches(store, "blocks.1.hook_resid_post", 64, side="all"))
        == ActivationStore(tmp_path / "single").manifest.valid_tokens
    )


def test_a_killed_rank_resumes_to_the_uninterrupted_store(tmp_path, tiny_model_folder, text_corpus):
    killed = run(tiny_model_folder, text_corpus, tmp_path / "killed", "shard-rename", 2, 1)  # rank 1, 2nd shard
    assert killed.returncode != 0
    assert not (tmp_path / "killed" / "manifest.json").exists()
    refused = run(tiny_model_folder, text_corpus, tmp_path / "killed", nproc=1)
    assert refused.returncode != 0 and "started by 2 process(es) and this run has 1" in refused.stderr
    resumed = run(tiny_model_folder, text_corpus, tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = run(tiny_model_folder, text_corpus, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    files = lambda root: {p.name: p.read_bytes() for p in sorted((root / "shards").iterdir())}  # noqa: E731
    assert files(tmp_path / "killed") == files(tmp_path / "straight")
    shards = lambda root: json.loads((root / "manifest.json").read_text())["shards"]  # noqa: E731
    assert shards(tmp_path / "killed") == shards(tmp_path / "straight")
