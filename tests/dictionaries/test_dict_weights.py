"""Weight estimators for the weighted SAE and user weight files."""

import json

import pytest
import torch
from safetensors.torch import save_file

import dictionaries as D


def superposed_sample(n=20000, seed=0):
    """Dimension 0 carries one sparse feature; dimension 1 the sum of eight."""
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(n, 9, generator=g) * (torch.rand(n, 9, generator=g) < 0.05)
    return torch.stack([features[:, 0], features[:, 1:].sum(-1)], dim=1)


@pytest.mark.parametrize("estimator", ["inverse_variance", "kurtosis", "hoyer"])
def test_estimators_favour_the_monosemantic_dimension(estimator):
    weights = D.estimate_weights(superposed_sample(), estimator)
    assert weights.mean() == pytest.approx(1.0) and weights[0] > weights[1]


def test_uniform_is_ones_and_alpha_sharpens():
    sample = superposed_sample()
    assert torch.equal(D.estimate_weights(sample, "uniform"), torch.ones(2))
    half, full = D.estimate_weights(sample, "kurtosis", 0.5), D.estimate_weights(sample, "kurtosis", 1.0)
    assert full[0] / full[1] == pytest.approx(float(half[0] / half[1]) ** 2, rel=1e-4)


def test_inverse_variance_by_hand():
    sample = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # variances 2 and 8 → scores 1/2, 1/8
    assert D.estimate_weights(sample, "inverse_variance").tolist() == pytest.approx([1.6, 0.4])


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown weight estimator 'magic'"):
        D.estimate_weights(torch.zeros(4, 2), "magic")


def test_weights_files(tmp_path):
    save_file({"weights": torch.tensor([1.0, 3.0])}, tmp_path / "w.safetensors")
    (tmp_path / "w.json").write_text(json.dumps({"weights": [1, 3]}))
    (tmp_path / "list.json").write_text("[1, 3]")
    for name in ("w.safetensors", "w.json", "list.json"):
        assert D.load_weights_file(tmp_path / name, 2).tolist() == [0.5, 1.5]
    with pytest.raises(ValueError, match=r"shape \(2,\), the dictionary needs \(3,\)"):
        D.load_weights_file(tmp_path / "w.json", 3)
    (tmp_path / "bad.json").write_text("[1, -3]")
    with pytest.raises(ValueError, match="non-negative"):
        D.load_weights_file(tmp_path / "bad.json", 2)


def test_wsae_prepare_uses_its_estimator_or_file(tmp_path):
    sample = superposed_sample()
    model = D.create(D.make_config("wsae", d=2, n_latents=4, estimator="hoyer", alpha=0.5))
    model.prepare(sample)
    assert torch.equal(model.reconstruction_weights, D.estimate_weights(sample, "hoyer", 0.5))
    (tmp_path / "w.json").write_text("[2, 6]")
    model = D.create(D.make_config("wsae", d=2, n_latents=4, estimator="file", weights_file=str(tmp_path / "w.json")))
    model.prepare(sample)
    assert model.reconstruction_weights.tolist() == [0.5, 1.5]


def test_wsae_config_validation():
    with pytest.raises(ValueError, match="needs weights_file"):
        D.make_config("wsae", d=2, n_latents=4, estimator="file")
    with pytest.raises(ValueError, match="unknown estimator"):
        D.make_config("wsae", d=2, n_latents=4, estimator="nope")
