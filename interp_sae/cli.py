"""The `interp-sae` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from activation_cache import corpus, models
from activation_cache.harvest import HarvestConfig

app = typer.Typer(
    help="Harvest LLM activations, train VAEase and sparse autoencoders on them, inspect and share the features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DEFAULTS = HarvestConfig(out="")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def harvest(
    out: Path = typer.Option(..., "--out", "-o", help="Store folder. Rerunning the same command into it resumes; other settings are refused."),
    model: str = typer.Option(_DEFAULTS.model, help=f"Hugging Face model id, local HF folder, .gguf file, or {models.BUILTIN_SMOLLM2!r} (offline SmolLM2-135M)."),
    revision: Optional[str] = typer.Option(None, help="Model revision (branch, tag or commit) for Hub ids, e.g. step143000 for Pythia."),
    hook: List[str] = typer.Option(_DEFAULTS.hooks, "--hook", help="TransformerLens hook name to store; repeat for several (one forward pass serves all)."),
    dataset: str = typer.Option(_DEFAULTS.dataset, help=f"`datasets` name (streamed), local .txt/.jsonl/.parquet file or folder, or {corpus.BUILTIN_PYDOC!r} (offline)."),
    dataset_config: Optional[str] = typer.Option(None, help="`datasets` configuration name."),
    split: str = typer.Option(_DEFAULTS.split, help="`datasets` split."),
    text_column: str = typer.Option(_DEFAULTS.text_column, help="Column (or JSON key) holding the text."),
    tokens: int = typer.Option(_DEFAULTS.tokens, help="Token budget. Rerun with a larger one to extend a finished store."),
    context_length: int = typer.Option(_DEFAULTS.context_length, help="Tokens per packed row, BOS included."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, help="Rows per forward pass; lower it if you run out of memory."),
    shard_tokens: int = typer.Option(_DEFAULTS.shard_tokens, help="Tokens per shard file: the unit of resume and of checksums."),
    store_dtype: str = typer.Option(_DEFAULTS.store_dtype, help="Activation dtype on disk: bfloat16 (default: half of float32's disk, no float16 overflow), float16 or float32."),
    model_dtype: str = typer.Option(_DEFAULTS.model_dtype, help="Dtype the model runs in: float32, bfloat16 or float16."),
    device: str = typer.Option(_DEFAULTS.device, help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ..."),
    repair: bool = typer.Option(False, help="First re-harvest the shards that fail their checksum (see `interp-sae verify`), and only those."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a model over a text corpus and stream hook activations into a sharded store.

    Documents are packed into rows that start with BOS; the forward pass stops after the
    deepest hooked layer. Kill it at any time: the same command resumes from the last
    complete shard.
    """
    from activation_cache.harvest import harvest as run_harvest

    try:
        config = HarvestConfig(
            out=str(out), model=model, revision=revision, hooks=list(hook), dataset=dataset,
            dataset_config=dataset_config, split=split, text_column=text_column, tokens=tokens,
            context_length=context_length, batch_size=batch_size, shard_tokens=shard_tokens,
            store_dtype=store_dtype, model_dtype=model_dtype, device=device,
        )
        run_harvest(config, progress=not quiet, repair=repair)
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)


@app.command()
def verify(store: Path = typer.Argument(..., help="Store folder to check.")) -> None:
    """Check every shard of a store against the sizes and checksums in its manifest."""
    from activation_cache.reader import ActivationStore

    try:
        opened = ActivationStore(store)
        problems = opened.verify()
    except (ValueError, OSError) as exc:
        _fail(exc)
    manifest = opened.manifest
    status = "complete" if manifest.complete else "incomplete (rerun the harvest command to finish it)"
    typer.echo(f"{store}: {len(manifest.shards)} shards, {manifest.tokens:,} tokens, {status}")
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code=1)
    typer.echo("all shards intact")


if __name__ == "__main__":
    app()
