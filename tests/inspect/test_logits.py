"""Logit effects against a hand computation from the Hugging Face weights."""

import pytest
import torch

import dictionaries as D
from interp_sae.logit_effects import logit_effects, unembed_directions


def test_logit_effects_equal_a_hand_computation(tiny_lm, tiny_model_folder, sae):
    from transformers import GPTNeoXForCausalLM

    hf = GPTNeoXForCausalLM.from_pretrained(tiny_model_folder)  # same weights as tiny_lm, not bridged
    ln_weight = hf.gpt_neox.final_layer_norm.weight.detach()
    unembed = hf.get_output_embeddings().weight.detach()  # [vocab, d]
    directions = sae.feature_directions.detach()
    expected = torch.stack(
        [
            (((v - v.mean()) * ln_weight) @ unembed.T) - (((v - v.mean()) * ln_weight) @ unembed.T).mean()
            for v in directions
        ]
    )
    torch.testing.assert_close(unembed_directions(tiny_lm, directions), expected, rtol=1e-5, atol=1e-6)

    effects = logit_effects(tiny_lm, directions, top_n=4)
    j = 5
    top = expected[j].topk(4)
    assert [e["token_id"] for e in effects[j]["promoted"]] == top.indices.tolist()
    assert [e["token_id"] for e in effects[j]["suppressed"]] == expected[j].topk(4, largest=False).indices.tolist()
    assert effects[j]["promoted"][0]["token"] == tiny_lm.tokenizer.decode([top.indices[0].item()])


def test_logit_effects_refuse_directions_off_the_residual_stream(tiny_lm):
    mlp_wide = D.create(D.make_config("sae_l1", d=128, n_latents=8), seed=0)
    with pytest.raises(ValueError, match=r"d=128.*d_model=32"):
        unembed_directions(tiny_lm, mlp_wide.feature_directions)
