"""The README's commands, run. Each is run as written, on tiny settings: the tiny Pythia-shaped
model instead of Pythia, a local corpus instead of Pile-10k, a local Hub server instead of the Hub."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hub.conftest import ALICE_TOKEN, hf_home, hub, online  # noqa: F401  (the local Hub server)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def shell_commands() -> list[str]:
    """Every command line of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def tiny(command: str, model: Path, corpus: Path) -> str:
    """The command at test scale. Each replacement is one the README's real settings need here."""
    replacements = [
        ("EleutherAI/pythia-70m-deduped", str(model)),
        ("builtin:smollm2", str(model)),
        ("--revision main ", ""),  # a local folder has no revisions
        ("NeelNanda/pile-10k", str(corpus)),
        ("builtin:pydoc", str(corpus)),
        ("blocks.3.hook_resid_post", "blocks.2.hook_resid_post"),  # the tiny model has 3 blocks
        ("blocks.15.hook_resid_post", "blocks.2.hook_resid_post"),
        ("--tokens 10000000", "--tokens 4096 --context-length 32 --shard-tokens 1024"),
        ("tokens=65536", "tokens=4096, context_length=32"),
        ("--latents 300", "--latents 16"),
        ("--latents 16384", "--latents 16"),
        ("n_latents=300", "n_latents=16"),
        ("sae_topk.k=32", "sae_topk.k=4"),
        ("--epochs 35", "--epochs 1"),
        ("D.TrainConfig(epochs=5)", "D.TrainConfig(epochs=1, device='cpu')"),
        ("--nproc_per_node 4", "--nproc_per_node 2"),
        ("your-name/", "alice/"),  # the local Hub's test user
    ]
    for real, small in replacements:
        command = command.replace(real, small)
    if command.startswith("interp-sae demo"):
        command += (
            f" --model {model} --dataset {corpus} --hook blocks.2.hook_resid_post --tokens 4096"
            " --context-length 32 --latents 16 --set sae_topk.k=4 --epochs 1 --batch-size 256 --loss-rows 4"
        )
    return command


CATEGORIES = {
    "run on tiny settings by test_readme_commands_run": lambda c: c.startswith(
        ("interp-sae ", "torchrun --standalone")
    ),
    "benchmarks: --help run here; each is run in full by hand and reported": lambda c: "benchmarks/" in c,
    "make test (and make setup, which it runs) is .ci/run itself": lambda c: (
        c in ("make test", "make setup", "make test-fast")
    ),
    "make demo = interp-sae demo, run above": lambda c: c == "make demo",
    "make lint is the first step of .ci/run": lambda c: c == "make lint",
    "the GPU machine's commands: make device-check runs there (the README reports its figures)": lambda c: (
        c in ("make wheelhouse", "make device-check")
    ),
    "GPU and manual installs: the same steps make setup runs, with another torch": lambda c: c.startswith(
        ("make setup TORCH=", "pip install")
    ),
    "multi-node: needs several machines (the README says it was not run here)": lambda c: "--nnodes" in c,
}


def test_every_readme_command_is_accounted_for():
    unaccounted = [c for c in shell_commands() if not any(match(c) for match in CATEGORIES.values())]
    assert not unaccounted, f"README commands no test runs: {unaccounted}"
    assert len(blocks("python")) == 2  # the API tour, and the browser on the demo's inspection


@pytest.mark.parametrize(
    "script", sorted({re.search(r"benchmarks/\S+\.py", c).group(0) for c in shell_commands() if "benchmarks/" in c})
)
def test_benchmark_commands_exist_and_explain_themselves(script):
    result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.slow
def test_readme_commands_run(online, tmp_path, tiny_model_folder, text_corpus):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    bin_dir = Path(sys.executable).parent
    for command in shell_commands():
        if not CATEGORIES["run on tiny settings by test_readme_commands_run"](command):
            continue
        args = shlex.split(tiny(command, tiny_model_folder, text_corpus))
        if args[0] == "torchrun":
            args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
        else:
            args = [str(bin_dir / "interp-sae"), *args[1:]]
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (tmp_path / "runs/demo/inspect/report.html").exists()
    assert (tmp_path / "runs/pulled-vaease/model.safetensors").exists()

    for code in blocks("python"):  # the browser's block reads the demo's inspection, written above
        result = subprocess.run(
            [sys.executable, "-c", tiny(code, tiny_model_folder, text_corpus)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{code}\n{result.stderr[-3000:]}"
