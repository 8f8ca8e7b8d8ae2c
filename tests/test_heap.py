"""interp_sae.heap: within `reused_heap()` a training step reuses the memory the step before it
freed (no new page faults once warm); outside it, glibc maps fresh pages for its largest tensors."""

import resource

import pytest
import torch

import dictionaries as D
from interp_sae import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="the C library is not glibc")

BATCH, KAPPA = 2048, 4200  # pre-activations of 34 MB: over glibc's largest dynamic mmap threshold (32 MiB)
PRE_PAGES = BATCH * KAPPA * 4 // resource.getpagesize()


def page_faults_per_step(steps: int = 3) -> float:
    model = D.create(D.make_config("topk_aux", d=16, n_latents=KAPPA, k=4), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # warm: the optimiser's state, the heap's growth
        D.training_step(model, optimizer, x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        D.training_step(model, optimizer, x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def test_a_training_step_reuses_the_last_steps_memory_within_the_block_only():
    assert page_faults_per_step() >= PRE_PAGES  # the pre-activations' pages are fresh every step
    with heap.reused_heap():
        with heap.reused_heap():  # nested: leaving it keeps the outer block's settings
            pass
        assert page_faults_per_step() < PRE_PAGES / 10
    assert page_faults_per_step() >= PRE_PAGES  # glibc's defaults are back
