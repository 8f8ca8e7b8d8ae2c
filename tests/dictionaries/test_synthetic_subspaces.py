"""benchmarks/synthetic_subspaces.py: its data match the authors' (scale included), and VAEase
trained on them finds each subspace's dimension instead of collapsing."""

import pytest
import torch

import dictionaries as D
from benchmarks.synthetic_subspaces import make_data


@pytest.mark.parametrize("basis", ["gaussian", "orthonormal"])
def test_subspace_data_have_the_authors_scale_and_dimensions(basis):
    # The authors map z ~ N(0, I_dim) through columns of a d × d N(0, 1) matrix, so
    # E‖x‖² = d·dim. Unit-norm directions (E‖x‖² = dim) put the signal below the initial
    # decoder noise γ = e^−0.5 per coordinate and VAEase collapses to AD 0.
    d, dims = 40, [4, 4, 4]
    x, labels = make_data(d, dims, 6000, noise=0.0, seed=0, basis=basis)
    assert x.shape == (6000, d) and set(labels.tolist()) == {0, 1, 2}
    assert 0.75 * d * 4 < x.pow(2).sum(-1).mean() < 1.25 * d * 4
    for s, dim in enumerate(dims):
        assert torch.linalg.matrix_rank(x[labels == s]) == dim
    assert torch.linalg.matrix_rank(x) == sum(dims)
    small, _ = make_data(d, dims, 6000, noise=0.0, seed=0, basis=basis, scale=0.5)
    assert torch.allclose(small, 0.5 * x)


@pytest.mark.slow
def test_vaease_active_dimensions_track_each_subspace_and_the_vae_uses_their_union(tmp_path):
    # The benchmark's geometry (d = 40, κ = 20, the authors' encoder and initial γ) at ~1700 steps:
    # fewer steps leave VAEase still in its high-γ phase, with too few active latents.
    dims = [2, 4]
    x, labels = make_data(40, dims, 40_000, noise=0.0, seed=0)
    test, test_labels, train = x[:4000], labels[:4000], x[4000:]
    vae = dict(d=40, n_latents=20, encoder="mlp", encoder_layers=4, init_log_gamma=-0.5)
    config = D.TrainConfig(
        epochs=12, lr=1e-2, schedule=D.ScheduleConfig(t0=10), progress=False, log_every=10_000, checkpoint_every=0
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: faster on one thread, and the CPU is shared
    try:
        result = D.train(
            {"vaease": D.make_config("vaease", **vae), "vae": D.make_config("vae", **vae)},
            D.TensorBatchSource(train, 256),
            tmp_path,
            config,
        )
    finally:
        torch.set_num_threads(threads)
    ad = {}
    for name, model in result.dictionaries.items():
        with torch.no_grad():
            ad[name] = model.active_mask(test).sum(-1).float()
            fvu = (test - model(test)).pow(2).sum() / (test - test.mean(0)).pow(2).sum()
        assert fvu < 0.02, name
    for s, dim in enumerate(dims):  # VAEase: each input's own subspace dimension
        assert abs(ad["vaease"][test_labels == s].mean() - dim) < 0.5, s
    # the VAE: one active set for every input, spanning the union of the subspaces
    assert ad["vae"].std() < 0.5 and ad["vae"].mean() > sum(dims) - 0.5
