"""CUDA checks of the float8_e4m3 store: a harvest encodes on the GPU what the CPU encodes, and
the reader moves the fp8 bytes and scales to the GPU and decodes them there to exactly the
vectors the CPU decodes. Skipped without CUDA; `make device-check` runs it with tests/gpu."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]


def harvest_fp8(out: Path, device: str, tokenizer, corpus: Path):
    from tiny_models import build_pythia_like

    from activation_cache import ActivationStore, HarvestConfig, LanguageModel, harvest

    # A fresh model per device: the bridge rewires the modules of the model it wraps.
    lm = LanguageModel.from_hf(build_pythia_like(len(tokenizer)), tokenizer, name="tiny-pythia", device=device)
    config = HarvestConfig(out=str(out), model="tiny-pythia", hooks=HOOKS, dataset=str(corpus), tokens=4000,
                           context_length=16, shard_tokens=320, batch_size=4, store_dtype="float8_e4m3",
                           device=device)  # fmt: skip
    harvest(config, model=lm, progress=False)
    return ActivationStore(out)


def test_fp8_harvest_and_reader_on_cuda_match_the_cpu(tmp_path, tiny_tokenizer, text_corpus, monkeypatch):
    from activation_cache import ShuffledBatches

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # CUDA matmuls round like the CPU's
    cpu, cuda = (harvest_fp8(tmp_path / d, d, tiny_tokenizer, text_corpus) for d in ("cpu", "cuda"))
    indices = list(range(len(cpu)))
    for hook in HOOKS:
        got, expected = cuda.activations(hook, indices), cpu.activations(hook, indices)
        # The models agree to ~1e-6; fp8 rounding may then differ by one e4m3 step (2^-3 relative).
        scale = expected.abs().amax(-1, keepdim=True)
        assert float(((got - expected).abs() / scale.clamp_min(1e-12)).max()) <= 2**-3
        error_cpu, error_cuda = cpu.manifest.reconstruction_error[hook], cuda.manifest.reconstruction_error[hook]
        assert error_cuda == pytest.approx(error_cpu, rel=0.05) and 1e-5 < error_cpu < 1e-2
    # The same store read onto the GPU: fp8 bytes and scales cross, decoded there, bit for bit the CPU's.
    for window_bytes in (1 << 30, 1):
        on_cpu = ShuffledBatches(cuda, HOOKS[0], 64, seed=2, window_bytes=window_bytes, device="cpu")
        on_gpu = ShuffledBatches(cuda, HOOKS[0], 64, seed=2, window_bytes=window_bytes, device="cuda")
        pairs = list(zip(on_cpu.batches(0), on_gpu.batches(0), strict=True))
        assert all(b.device.type == "cuda" and b.dtype == torch.float32 for _, b in pairs)
        assert all(torch.equal(a, b.cpu()) for a, b in pairs)
    print(f"RESULT test=cuda_fp8_store reconstruction_error={cuda.manifest.reconstruction_error[HOOKS[0]]:.3e}")
