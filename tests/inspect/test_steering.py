"""Steering on the tiny model: exact logit changes, clamped activations, reproducible generation."""

import pytest
import torch
from conftest import HOOK
from tiny_models import build_pythia_like

import dictionaries as D
from interp_sae.ablation import text_sequence
from interp_sae.errors import ConfigError
from interp_sae.splice import run_logits
from interp_sae.steering import Intervention, steer, steering_hook

TEXT = "The quick brown fox"
UNEMBED = "unembed.hook_in"  # sees the final-normalised residual: logits = x · W_Uᵀ + b


def ids_and_mask(lm):
    ids, mask = text_sequence(lm, TEXT)
    return torch.tensor([ids]), torch.tensor([mask])


@pytest.fixture(scope="module")
def lm_head(tiny_tokenizer):
    """W_U [vocab, d], from a fresh copy of the tiny model (same seed), not through the bridge."""
    return build_pythia_like(len(tiny_tokenizer)).get_output_embeddings().weight.detach()


@pytest.fixture
def unembed_sae():
    dictionary = D.create(D.make_config("sae_l1", d=32, n_latents=8), seed=5)
    dictionary.input_scale.fill_(2.0)  # steering adds raw-unit directions: decoder column / input scale
    return dictionary


def test_adding_features_at_the_unembedding_moves_the_logits_by_their_directions(tiny_lm, lm_head, unembed_sae):
    assert UNEMBED in tiny_lm.bridge.hook_dict
    ids, mask = ids_and_mask(tiny_lm)
    plain = run_logits(tiny_lm, ids)
    fn = steering_hook(unembed_sae, [Intervention(3, 4.0), Intervention(6, -1.5)], mask=mask)
    steered = run_logits(tiny_lm, ids, [(UNEMBED, fn)])
    decoder = unembed_sae.decoder.weight.detach()
    expected = ((4.0 * decoder[:, 3] - 1.5 * decoder[:, 6]) / 2.0) @ lm_head.T
    torch.testing.assert_close(steered[0, 1:] - plain[0, 1:], expected.expand_as(plain[0, 1:]), rtol=1e-5, atol=1e-5)
    assert torch.equal(steered[0, 0], plain[0, 0])  # BOS is never steered


def test_steered_generation_takes_the_steered_argmax(tiny_lm, lm_head, unembed_sae):
    ids, _ = ids_and_mask(tiny_lm)
    last = run_logits(tiny_lm, ids)[0, -1]
    decoder = unembed_sae.decoder.weight.detach()
    for strength in (3.0, 30.0):
        token = int((last + strength * (decoder[:, 1] / 2.0) @ lm_head.T).argmax())
        result = steer(tiny_lm, unembed_sae, TEXT, [(1, strength)], hook=UNEMBED, max_new_tokens=1)
        assert result["steered"]["ids"] == ([] if token == tiny_lm.tokenizer.eos_token_id else [token])
        assert result["plain"]["ids"] == [int(last.argmax())]


@pytest.mark.parametrize("sample", [False, True])
def test_strength_zero_reproduces_the_plain_generation_token_for_token(tiny_lm, sae, sample):
    settings = {"hook": HOOK, "max_new_tokens": 6, "sample": sample, "top_k": 50 if sample else None, "seed": 7}
    result = steer(tiny_lm, sae, TEXT, [(3, 0.0), (9, 0.0)], **settings)
    plain = result["plain"]
    assert result["steered"] == plain and len(plain["ids"]) > 0
    assert plain["text"] == tiny_lm.tokenizer.decode(plain["ids"])
    assert plain["tokens"] == [tiny_lm.tokenizer.decode([t]) for t in plain["ids"]]
    assert steer(tiny_lm, sae, TEXT, [(3, 0.0)], **settings)["plain"] == plain  # the seed fixes the draws
    assert steer(tiny_lm, sae, TEXT, [(3, 50.0)], **settings)["steered"] != plain
    assert {k: result[k] for k in ("prompt", "hook", "mode", "interventions", "sample", "temperature", "seed")} == {
        "prompt": TEXT,
        "hook": HOOK,
        "mode": "add",
        "interventions": [{"feature": 3, "value": 0.0}, {"feature": 9, "value": 0.0}],
        "sample": sample,
        "temperature": 1.0,
        "seed": 7,
    }


def test_clamping_sets_the_features_activation_and_keeps_the_rest(tiny_lm):
    """A tied SAE with orthonormal directions and a large encoder bias (every pre-activation > 0),
    so encoding the steered activation must give back exactly the clamped values."""
    sae = D.create(D.make_config("sae_l1", d=32, n_latents=8), seed=0)
    q = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(0))).Q
    with torch.no_grad():
        sae.decoder.weight.copy_(q)
        sae.decoder.bias.zero_()
        sae.encoder.weight.copy_(q.T)
        sae.encoder.bias.fill_(100.0)
    ids, mask = ids_and_mask(tiny_lm)
    seen = {}

    def record(activation, hook):
        seen[len(seen)] = activation.clone()
        return activation

    fn = steering_hook(sae, [(2, 7.5), (5, 0.25)], mode="clamp", mask=mask)
    run_logits(tiny_lm, ids, [(HOOK, record), (HOOK, fn), (HOOK, record)])
    clean, steered = seen[0][0], seen[1][0]
    with torch.no_grad():
        before, after = sae.encode(clean[1:]), sae.encode(steered[1:])
    torch.testing.assert_close(after[:, [2, 5]], torch.tensor([[7.5, 0.25]]).expand(len(after), 2), atol=1e-4, rtol=0)
    others = [0, 1, 3, 4, 6, 7]
    torch.testing.assert_close(after[:, others], before[:, others], atol=1e-4, rtol=0)
    assert torch.equal(steered[0], clean[0])  # BOS untouched


def test_bad_interventions_are_refused(tiny_lm, sae):
    with pytest.raises(ConfigError, match="features \\[64\\] do not exist: the dictionary has features 0 … 63"):
        steer(tiny_lm, sae, TEXT, [(64, 1.0)], hook=HOOK)
    with pytest.raises(ConfigError, match="clamped to one value only"):
        steering_hook(sae, [(3, 1.0), (3, 2.0)], mode="clamp")
    with pytest.raises(ConfigError, match="steering mode must be one of"):
        steering_hook(sae, [(3, 1.0)], mode="multiply")
    with pytest.raises(ConfigError, match="nothing to steer"):
        steer(tiny_lm, sae, TEXT, [], hook=HOOK)
    with pytest.raises(ConfigError, match="exceed the model's context of 256"):
        steer(tiny_lm, sae, TEXT, [(3, 1.0)], hook=HOOK, max_new_tokens=300)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        steer(tiny_lm, sae, TEXT, [(3, 1.0)], hook=HOOK, sample=True, temperature=0.0)
