"""CUDA checks: training on the GPU matches the CPU, a killed CUDA run resumes exactly, bf16
autocast trains, and a harvest on the GPU stores what the CPU stores.

Every test carries the `gpu` marker and is skipped where `torch.cuda.is_available()` is false
(`pytest -m gpu` on a CPU machine reports them skipped). `make device-check` runs them on the
GPU machine. Each prints a `RESULT ...` line (seen with `pytest -s`) with the measured gap.

Run as a script, this file is the helper of the resume test (like tests/dictionaries/resume_run.py,
on CUDA):  python test_cuda.py resume OUT_DIR [KILL_ON NTH]
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dictionaries as D

REPO = Path(__file__).resolve().parents[2]
HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """TF32 off, so a CUDA fp32 matmul rounds like the CPU's (to ~1e-6, not ~1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sparse_data(n: int, d: int = 64, atoms: int = 512, active: int = 4, seed: int = 0) -> torch.Tensor:
    """n vectors, each a sum of `active` of `atoms` random unit directions, plus a little noise:
    data a sparse dictionary can learn, so the runs compared do real work."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g), dim=1)
    codes = torch.zeros(n, atoms)
    codes.scatter_(
        1, torch.rand(n, atoms, generator=g).topk(active, dim=1).indices, torch.rand(n, active, generator=g) + 0.5
    )
    return codes @ basis + 0.01 * torch.randn(n, d, generator=g)


def configs() -> dict:
    return {
        "topk_aux": D.make_config("topk_aux", d=64, n_latents=256, k=8, aux_k=32, dead_after_tokens=2048),
        "vaease": D.make_config("vaease", d=64, n_latents=256, init_log_gamma=-0.5),
        "sae_l1": D.make_config("sae_l1", d=64, n_latents=256),
    }


def train_config(device: str, **overrides) -> D.TrainConfig:
    settings = dict(
        epochs=2,
        lr=1e-3,
        device=device,
        progress=False,
        log_every=8,
        checkpoint_every=0,
        prepare_vectors=2048,
        eval_max_vectors=2048,
        curve_vectors=512,
        curve_max_k=16,
    )
    settings.update(overrides)
    return D.TrainConfig(**settings)


def run(out_dir: Path, device: str, **overrides) -> D.TrainResult:
    data = sparse_data(4096 + 1024)
    train, test = data[:4096], data[4096:]
    return D.train(
        configs(),
        D.TensorBatchSource(train, 256, seed=1),
        out_dir,
        train_config(device, **overrides),
        eval_source=D.TensorBatchSource(test, 256, shuffle=False),
    )


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (absolute when b is zero), on the CPU in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b.norm())
    return float((a - b).norm()) / (scale if scale > 0 else 1.0)


@pytest.fixture
def cpu_noise_for_cuda_generators(monkeypatch):
    """VAEase's posterior noise comes from the run's generator on the training device, and a CUDA
    generator (Philox) draws other numbers than a CPU one (Mersenne Twister) from the same seed.
    To compare the arithmetic alone, a CUDA generator's draws are replaced by those of a CPU
    generator seeded alike, moved to the GPU. (The resume test below keeps the real CUDA noise.)"""
    real_randn, mirrors = torch.randn, {}

    def randn(*size, generator=None, device=None, dtype=None, **kwargs):
        if generator is not None and generator.device.type == "cuda":
            if id(generator) not in mirrors:  # the generator is kept too, so its id is not reused
                mirrors[id(generator)] = (generator, torch.Generator().manual_seed(generator.initial_seed()))
            cpu = mirrors[id(generator)][1]
            return real_randn(*size, generator=cpu, dtype=dtype, **kwargs).to(device)
        return real_randn(*size, generator=generator, device=device, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "randn", randn)


def test_training_on_cuda_matches_cpu(tmp_path, cpu_noise_for_cuda_generators):
    cpu = run(tmp_path / "cpu", "cpu")
    cuda = run(tmp_path / "cuda", "cuda")
    assert cpu.steps == cuda.steps == 32
    worst = {}
    for name, cpu_model in cpu.dictionaries.items():
        cuda_state = cuda.dictionaries[name].state_dict()
        assert all(t.device.type == "cuda" for t in cuda_state.values()), name
        for key, expected in cpu_model.state_dict().items():
            got = cuda_state[key]
            assert got.dtype == expected.dtype and got.shape == expected.shape, (name, key)
            if expected.is_floating_point():
                gap = relative_gap(got, expected)
                assert gap < 5e-3, f"{name}.{key}: CUDA weights differ from the CPU's by {gap:.2e} (relative)"
                worst[name] = max(worst.get(name, 0.0), gap)
            else:  # counters (TopK-aux dead latents): a near-tie may flip one firing, rarely
                mismatch = float((got.cpu() != expected).double().mean())
                assert mismatch <= 0.02, f"{name}.{key}: {mismatch:.1%} of the entries differ"
        for metric in ("fvu_deterministic", "re_deterministic"):
            a, b = cuda.metrics[name][metric], cpu.metrics[name][metric]
            assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (name, metric, a, b)
    print("RESULT test=cuda_vs_cpu_training " + " ".join(f"{n}_max_rel_gap={g:.2e}" for n, g in worst.items()))


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    fp32 = run(tmp_path / "fp32", "cuda")
    bf16 = run(tmp_path / "bf16", "cuda", precision="bf16")
    lines = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r["event"] == "train"]
    assert losses and all(map(math.isfinite, losses))
    report = []
    for name, model in bf16.dictionaries.items():
        assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast must leave the weights fp32"
        a, b = bf16.metrics[name]["fvu_deterministic"], fp32.metrics[name]["fvu_deterministic"]
        assert math.isfinite(a) and abs(a - b) <= 0.02 + 0.05 * b, (name, a, b)
        loaded = D.load_dictionary(tmp_path / "bf16" / name)
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        report.append(f"{name}_fvu_bf16={a:.4f} {name}_fvu_fp32={b:.4f}")
    print("RESULT test=bf16_autocast " + " ".join(report))


# --- resume on CUDA: a real SIGKILL at a checkpoint write, in a subprocess ----------------------


def resume_main(out_dir: str) -> None:
    """A fixed CUDA run in OUT_DIR (resuming if a checkpoint exists), with the real CUDA noise."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)  # bitwise-equal reruns; warns if it cannot
    data = sparse_data(4096, d=32, seed=3)
    run_configs = {
        "vaease": D.make_config("vaease", d=32, n_latents=64, init_log_gamma=-0.5),
        "sae_l1": D.make_config("sae_l1", d=32, n_latents=64),
        "topk_aux": D.make_config("topk_aux", d=32, n_latents=64, k=4, aux_k=8, dead_after_tokens=512),
    }
    config = train_config("cuda", epochs=3, lr=3e-3, checkpoint_every=10, log_every=50, normalize_input=True)
    D.train(run_configs, D.TensorBatchSource(data, 128, seed=1), out_dir, config)


def run_resume_script(out_dir: Path, *kill) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "dictionaries")]),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS
    }
    return subprocess.run(
        [sys.executable, __file__, "resume", str(out_dir), *map(str, kill)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_cuda_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from dictionaries.checkpoint import load_checkpoint

    straight = run_resume_script(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_resume_script(tmp_path / "killed", "checkpoint-written", 3)  # the step-30 write
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    _, state = load_checkpoint(tmp_path / "killed" / D.trainer.CHECKPOINT_FILE)
    assert state["step"] == 20  # the half-written step-30 checkpoint is never the one in place
    resumed = run_resume_script(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "resume"] == [20]
    for name in ("vaease", "sae_l1", "topk_aux"):
        a = load_file(tmp_path / "killed" / name / "model.safetensors")
        b = load_file(tmp_path / "straight" / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name}: resumed != uninterrupted"
        metrics_a = json.loads((tmp_path / "killed" / name / "metrics.json").read_text())
        metrics_b = json.loads((tmp_path / "straight" / name / "metrics.json").read_text())
        assert metrics_a == metrics_b, name
    print("RESULT test=cuda_resume exact=1 resumed_from=20")


# --- harvest on CUDA ---------------------------------------------------------------------------


def test_harvest_on_cuda_stores_what_the_cpu_stores(tmp_path, tiny_tokenizer, text_corpus):
    from tiny_models import build_pythia_like

    from activation_cache import ActivationStore, HarvestConfig, LanguageModel, ShuffledBatches, harvest

    stores = {}
    for device in ("cpu", "cuda"):
        # A fresh model for each: the bridge rewires the modules of the model it wraps.
        lm = LanguageModel.from_hf(
            build_pythia_like(len(tiny_tokenizer)), tiny_tokenizer, name="tiny-pythia", device=device
        )
        assert lm.device.type == device
        config = HarvestConfig(
            out=str(tmp_path / device),
            model="tiny-pythia",
            hooks=HOOKS,
            dataset=str(text_corpus),
            tokens=4000,
            context_length=16,
            shard_tokens=320,
            batch_size=4,
            store_dtype="float32",
            device=device,
        )
        manifest = harvest(config, model=lm, progress=False)
        assert manifest.complete
        stores[device] = ActivationStore(tmp_path / device)
    cpu, cuda = stores["cpu"], stores["cuda"]
    assert len(cuda) == len(cpu) > 0 and len(cuda.manifest.shards) == len(cpu.manifest.shards)
    indices = list(range(len(cpu)))
    for index in (0, 17, len(cpu) // 2, len(cpu) - 1):
        assert cuda.lookup(index).token_id == cpu.lookup(index).token_id
    gaps = {}
    for hook in HOOKS:
        got, expected = cuda.activations(hook, indices), cpu.activations(hook, indices)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        gaps[hook] = float((got - expected).abs().max())
    batches = ShuffledBatches(cuda, HOOKS[0], batch_size=64, device="cuda")
    first = next(iter(batches.batches(0)))
    assert first.device.type == "cuda" and first.shape == (64, 32)
    print("RESULT test=cuda_harvest " + " ".join(f"{h}_max_abs_gap={g:.2e}" for h, g in gaps.items()))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "resume":
        if len(sys.argv) > 3:
            from resume_run import kill_on  # tests/dictionaries: SIGKILL at the NTH checkpoint write

            kill_on(sys.argv[3], int(sys.argv[4]))
        resume_main(sys.argv[2])
    else:
        sys.exit(__doc__)
