"""Real torchrun, 2 CPU processes (gloo): training on the fly, each rank on its own documents,
killed for real and resumed with the same command."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import dictionaries as D

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "on_the_fly_script.py"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}


def torchrun(*args):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
    )


def trained_on(path: Path) -> dict:
    """(epoch, batch) → origins, the last record of each (a batch redone after a resume is the same)."""
    last: dict = {}
    for epoch, index, origin in (json.loads(line) for line in path.read_text().splitlines()):
        assert last.get((epoch, index), origin) == origin
        last[(epoch, index)] = origin
    return last


def test_each_rank_trains_its_own_documents_once_across_a_kill(tmp_path, tiny_model_folder, text_corpus):
    args = (SCRIPT, tiny_model_folder, text_corpus, tmp_path / "run", tmp_path / "record.jsonl")
    killed = torchrun(*args, "3")  # rank 0 dies writing its 3rd checkpoint (step 21); torchrun ends rank 1
    assert killed.returncode != 0
    assert not (tmp_path / "run" / "blocks.1.hook_resid_post" / "sae_topk").exists()
    resumed = torchrun(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    per_rank = [trained_on(tmp_path / f"record.jsonl.rank{rank}") for rank in (0, 1)]
    for rank, batches in enumerate(per_rank):
        assert sorted(batches) == [(e, i) for e in (0, 1) for i in range(32)]  # the same 64 steps on each rank
        assert {len(origin) for origin in batches.values()} == {16}  # half of the batch of 32
        assert {doc % 2 for origin in batches.values() for doc, _ in origin} == {rank}  # its own documents
    for epoch in (0, 1):
        tokens = Counter(tuple(p) for batches in per_rank for (e, _), o in batches.items() if e == epoch for p in o)
        assert sum(tokens.values()) == 1024 and set(tokens.values()) == {1}  # the budget, each token once
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "resume"] == [14]
    assert sum(r["event"] == "eval" for r in log) == 4  # rank 0 alone: 2 hooks × 2 dictionaries, at the end
    folder = tmp_path / "run" / "blocks.1.hook_resid_post" / "sae_topk"
    assert "loss_recovered" in json.loads((folder / "metrics.json").read_text())
    assert D.load_dictionary(folder).metadata["on_the_fly"]["tokens"] == 2048
