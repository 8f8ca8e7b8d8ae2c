"""The harvest and verify commands as a user runs them: a real process, a model folder on disk."""

import json
import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "interp_sae.cli"]


def run(*args):
    wide = {**os.environ, "COLUMNS": "200"}  # rich wraps and elides option names in narrow terminals
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=wide)


def test_help_explains_every_harvest_option():
    result = run("harvest", "--help")
    assert result.returncode == 0
    for option in (
        "--out",
        "--model",
        "--revision",
        "--hook",
        "--dataset",
        "--tokens",
        "--context-length",
        "--batch-size",
        "--store-dtype",
        "--model-dtype",
        "--device",
        "--repair",
    ):
        assert option in result.stdout


@pytest.mark.slow
def test_harvest_from_a_local_model_folder_then_verify(tmp_path, tiny_model_folder, text_corpus):
    out = tmp_path / "store"
    args = [
        "harvest",
        "--model",
        tiny_model_folder,
        "--dataset",
        text_corpus,
        "--hook",
        "blocks.2.hook_resid_post",
        "--tokens",
        512,
        "--context-length",
        32,
        "--shard-tokens",
        256,
        "--out",
        out,
        "--quiet",
    ]
    assert run(*args).returncode == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["tokens"] == 512 and len(manifest["shards"]) == 2
    assert manifest["model"]["id"] == str(tiny_model_folder) and manifest["dataset"]["kind"] == "local"
    verified = run("verify", out)
    assert verified.returncode == 0 and "2 shards, 512 tokens, complete" in verified.stdout

    shard = out / manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    damaged = run("verify", out)
    assert damaged.returncode == 1
    assert "shard 1" in damaged.stderr and "truncated" in damaged.stderr and "--repair" in damaged.stderr

    wrong = run(*[a if a != "blocks.2.hook_resid_post" else "blocks.2.hook_resid" for a in args])
    assert wrong.returncode == 2
    assert "error:" in wrong.stderr and "hooks: store has ['blocks.2.hook_resid_post']" in wrong.stderr

    bad_hook = run(*[a if a != out else tmp_path / "other" for a in args][:-1], "--hook", "blocks.9.hook_out")
    assert bad_hook.returncode == 2 and "layer 9 is out of range" in bad_hook.stderr


def test_verify_on_a_folder_that_is_not_a_store_says_how_to_make_one(tmp_path):
    result = run("verify", tmp_path)
    assert result.returncode == 2
    assert "is not an activation store" in result.stderr and "interp-sae harvest --out" in result.stderr


INTERRUPT_AFTER_SECOND_SHARD = """
import os, signal, sys
from interp_sae import atomic  # every file is committed through it
from interp_sae.cli import app
real_replace, renamed = os.replace, []
def replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".safetensors"):
        renamed.append(dst)
        if len(renamed) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
atomic.os.replace = replace
sys.argv = ["interp-sae", *sys.argv[1:]]
app()
"""


@pytest.mark.slow
def test_ctrl_c_keeps_every_complete_shard_and_the_same_command_finishes(tmp_path, tiny_model_folder, text_corpus):
    out = tmp_path / "store"
    args = [
        "harvest",
        "--model",
        str(tiny_model_folder),
        "--dataset",
        str(text_corpus),
        "--tokens",
        "4096",
        "--hook",
        "blocks.2.hook_resid_post",
        "--context-length",
        "32",
        "--shard-tokens",
        "512",
        "--out",
        str(out),
        "--quiet",
    ]
    interrupted = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AFTER_SECOND_SHARD, *args], capture_output=True, text=True
    )
    assert interrupted.returncode == 130, interrupted.stderr
    assert "interrupted: every complete shard is kept; rerun the same command to resume" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) >= 2
    assert run(*args).returncode == 0
    assert run("verify", out).returncode == 0
    straight = tmp_path / "straight"
    assert run(*[str(straight) if a == str(out) else a for a in args]).returncode == 0
    shard_bytes = lambda root: {p.name: p.read_bytes() for p in (root / "shards").iterdir()}  # noqa: E731
    assert shard_bytes(out) == shard_bytes(straight)
