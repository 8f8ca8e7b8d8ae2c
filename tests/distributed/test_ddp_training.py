"""Real torchrun, 2 CPU processes (gloo): DDP training equals one process on the same global batches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("ddp_train_script.py")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
    )


def test_two_ranks_train_what_one_process_trains(tmp_path):
    single = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "single")], capture_output=True, text=True, env=ENV
    )
    assert single.returncode == 0, single.stderr
    ddp = torchrun(SCRIPT, tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for name in ("sae_l1", "sae_topk"):
        a = load_file(tmp_path / "single" / name / "model.safetensors")
        b = load_file(tmp_path / "ddp" / name / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    # one log, written by rank 0, with training losses averaged over the ranks
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "eval" for r in log) == 2
    single_log = [json.loads(line) for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    first = lambda rows: next(r for r in rows if r["event"] == "train" and r["dictionary"] == "sae_l1")  # noqa: E731
    assert first(log)["loss"] == pytest.approx(first(single_log)["loss"], rel=1e-4)
    state = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert state["steps_per_epoch"] == [16, 16, 16]


def test_a_checkpoint_from_another_world_size_is_refused(tmp_path):
    assert torchrun(SCRIPT, tmp_path).returncode == 0
    again = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert again.returncode != 0 and "belongs to a run with different world_size" in again.stderr
