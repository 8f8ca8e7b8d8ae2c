"""Tiny real models and tokenizers built inside the tests: no download, no ../shared."""

from __future__ import annotations

import tempfile

import torch

# Words the test tokenizer knows; also the vocabulary of the test corpora.
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders find features in the residual stream of a language model.",
    "Every activation can be traced back to the document and position it came from.",
] * 40


def build_tokenizer(vocab_size: int = 300):
    """A real byte-level BPE tokenizer with Pythia's convention: <|endoftext|> is id 0 and is BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    folder = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def build_pythia_like(vocab_size: int, d_model: int = 32, n_layers: int = 3, seed: int = 0):
    """A randomly initialised GPTNeoXForCausalLM with Pythia's architecture at a tiny shape."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=4 * d_model,
        rotary_pct=0.25,
        use_parallel_residual=True,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).eval()
