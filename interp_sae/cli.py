"""The `interp-sae` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, cast

import typer

import dictionaries as D
from activation_cache import corpus, models
from activation_cache.harvest import HarvestConfig
from interp_sae import cli_inspect, cli_intervene, cli_share
from interp_sae.cli_common import boundary
from interp_sae.pipeline import PipelineConfig
from interp_sae.train_from_store import DEFAULT_ARCHITECTURES, DEFAULT_LATENTS, DataConfig, TrainSetupError
from interp_sae.train_on_the_fly import OnTheFlyConfig

app = typer.Typer(
    help="Harvest LLM activations, train VAEase and sparse autoencoders on them, inspect and share the features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # joins docstring lines into paragraphs in --help
)

# Every option's default is read from the config it fills: one place to change a default.
_DEFAULTS = HarvestConfig(out="")
_PIPELINE = PipelineConfig()
_TRAIN = D.TrainConfig()
_DATA = DataConfig()
_FLY = OnTheFlyConfig()


@app.command()
def harvest(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Store folder. Rerunning the same command into it resumes; other settings are refused."
    ),
    model: str = typer.Option(
        _DEFAULTS.model,
        help=f"Hugging Face model id, local HF folder, .gguf file, or {models.BUILTIN_SMOLLM2!r} (offline SmolLM2-135M).",
    ),
    revision: str | None = typer.Option(
        None, help="Model revision (branch, tag or commit) for Hub ids, e.g. step143000 for Pythia."
    ),
    hook: list[str] = typer.Option(
        _DEFAULTS.hooks,
        "--hook",
        help="TransformerLens hook name to store; repeat for several (one forward pass serves all).",
    ),
    dataset: str = typer.Option(
        _DEFAULTS.dataset,
        help=f"`datasets` name (streamed), local .txt/.jsonl/.parquet file or folder, or {corpus.BUILTIN_PYDOC!r} (offline).",
    ),
    dataset_config: str | None = typer.Option(None, help="`datasets` configuration name."),
    split: str = typer.Option(_DEFAULTS.split, help="`datasets` split."),
    text_column: str = typer.Option(_DEFAULTS.text_column, help="Column (or JSON key) holding the text."),
    tokens: int = typer.Option(
        _DEFAULTS.tokens, help="Token budget. Rerun with a larger one to extend a finished store."
    ),
    context_length: int = typer.Option(_DEFAULTS.context_length, help="Tokens per packed row, BOS included."),
    batch_size: int = typer.Option(
        _DEFAULTS.batch_size, help="Rows per forward pass; lower it if you run out of memory."
    ),
    shard_tokens: int = typer.Option(
        _DEFAULTS.shard_tokens, help="Tokens per shard file: the unit of resume and of checksums."
    ),
    store_dtype: str = typer.Option(
        _DEFAULTS.store_dtype,
        help="Activation dtype on disk: bfloat16 (default: half of float32's disk, no float16 overflow), "
        "float8_e4m3 (half of bfloat16's: one byte an element plus a scale per vector, relative error ~1e-3), "
        "float16 or float32.",
    ),
    model_dtype: str = typer.Option(
        _DEFAULTS.model_dtype, help="Dtype the model runs in: float32, bfloat16 or float16."
    ),
    device: str = typer.Option(_DEFAULTS.device, help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ..."),
    on_nonfinite: str = typer.Option(
        _DEFAULTS.on_nonfinite,
        help="What a NaN/Inf activation does: stop (with its row, position and document), or skip (leave the position out of training and count it in the manifest).",
    ),
    repair: bool = typer.Option(
        False, help="First re-harvest the shards that fail their checksum (see `interp-sae verify`), and only those."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a model over a text corpus and stream hook activations into a sharded store.

    Documents are packed into rows that start with BOS; the forward pass stops after the
    deepest hooked layer. Kill it at any time: the same command resumes from the last
    complete shard.
    """
    from activation_cache.harvest import harvest as run_harvest

    with boundary("every complete shard is kept"):
        config = HarvestConfig(
            out=str(out),
            model=model,
            revision=revision,
            hooks=list(hook),
            dataset=dataset,
            dataset_config=dataset_config,
            split=split,
            text_column=text_column,
            tokens=tokens,
            context_length=context_length,
            batch_size=batch_size,
            shard_tokens=shard_tokens,
            store_dtype=store_dtype,
            model_dtype=model_dtype,
            device=device,
            on_nonfinite=on_nonfinite,
        )
        run_harvest(config, progress=not quiet, repair=repair)


@app.command()
def verify(store: Path = typer.Argument(..., help="Store folder to check.")) -> None:
    """Check every shard of a store against the sizes and checksums in its manifest."""
    from activation_cache import ActivationStore

    with boundary():
        opened = ActivationStore(store)
        problems = opened.verify()
    manifest = opened.manifest
    status = "complete" if manifest.complete else "incomplete (rerun the harvest command to finish it)"
    typer.echo(f"{store}: {len(manifest.shards)} shards, {manifest.tokens:,} tokens, {status}")
    for hook, error in manifest.reconstruction_error.items():
        if error is not None:
            typer.echo(f"{hook}: {manifest.dtype}, relative error of the stored vectors {error:.2e}")
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code=1)
    typer.echo("all shards intact")


def _harvest_help(option: str) -> str:
    """The help of `harvest`'s option, so that `train` on the fly describes it in the same words."""
    return inspect.signature(harvest).parameters[option].default.help


@app.command()
def train(
    store: Path | None = typer.Argument(
        None,
        help="Activation store folder (from `interp-sae harvest`). Leave it out to train on the fly: the model runs "
        "as training goes (--model, --dataset, --tokens), and nothing is stored.",
        show_default=False,
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run folder: checkpoint, log.jsonl, AD–RE curves, one subfolder per dictionary. Rerun the same command to resume.",
    ),
    hook: list[str] = typer.Option(
        [],
        "--hook",
        help="Hook to train on (default: the store's only hook). On the fly: required, and repeatable: one forward "
        "pass feeds one set of dictionaries per hook (folders HOOK/ARCH).",
        show_default=False,
    ),
    arch: list[str] = typer.Option(
        DEFAULT_ARCHITECTURES,
        "--arch",
        help=f"Architecture; repeat to train several on the same batches: {', '.join(sorted(D.REGISTRY))}.",
    ),
    latents: list[int] = typer.Option(
        [DEFAULT_LATENTS], "--latents", help="Number of features κ; repeat for a size sweep (each --arch × each size)."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Architecture hyperparameter ARCH.FIELD=VALUE, e.g. sae_topk.k=32, sae_l1.l1_coefficient=0.1, wsae.estimator=kurtosis, wsae.encoder=topk.",
    ),
    epochs: int | None = typer.Option(
        None,
        help=f"Passes over the training split (default {_TRAIN.epochs}, the paper's; on the fly default 1, since "
        "each pass runs the model again).",
        show_default=False,
    ),
    lr: float = typer.Option(_TRAIN.lr, help="Adam learning rate (paper default 5e-3)."),
    batch_size: int = typer.Option(_DATA.batch_size, help="Vectors per step (paper default 2048)."),
    schedule: str = typer.Option(
        _TRAIN.schedule.kind,
        help="cosine_warm_restarts (paper: T0=5 batches, Tmult=2, stepped per batch), constant, warmup_constant, warmup_cosine.",
    ),
    warmup_steps: int = typer.Option(_TRAIN.schedule.warmup_steps, help="Warm-up length for the warmup_* schedules."),
    seed: int = typer.Option(_TRAIN.seed, help="Seed of initialisation, batch order and VAE noise (paper: 114514)."),
    val_fraction: float = typer.Option(
        _DATA.split.val_fraction,
        help="Fraction of documents held out for evaluation (paper: 90/10). Recorded in every dictionary: "
        "inspect, ablate and loss recovered reuse it.",
    ),
    split_seed: int = typer.Option(_DATA.split.seed, help="Seed of the document hash that decides the held-out split."),
    precision: str = typer.Option(
        _TRAIN.precision, help="fp32, or bf16 autocast of the forward pass (parameters stay fp32)."
    ),
    normalize_input: bool = typer.Option(
        _TRAIN.normalize_input, help="Scale inputs to mean norm √d during training; folded back on save."
    ),
    max_norm_ratio: float | None = typer.Option(
        _TRAIN.max_norm_ratio,
        help="Leave out vectors longer than this × the median norm (massive activations, e.g. 3); the cap is "
        "saved with each dictionary, and splicing leaves such positions as they are. Default: keep all.",
        show_default=False,
    ),
    device: str = typer.Option(_TRAIN.device, help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ..."),
    checkpoint_every: int = typer.Option(
        _TRAIN.checkpoint_every, help="Steps between checkpoints (atomic; the resume points)."
    ),
    eval_every: int = typer.Option(_TRAIN.eval_every, help="Steps between held-out evaluations (0: only at the end)."),
    wandb_project: str | None = typer.Option(
        _TRAIN.wandb_project, help="Also log to this Weights & Biases project (needs `wandb`)."
    ),
    model: str | None = typer.Option(
        None, help="On the fly (no STORE): " + _harvest_help("model"), show_default=False, rich_help_panel="On the fly"
    ),
    revision: str | None = typer.Option(None, help=_harvest_help("revision"), rich_help_panel="On the fly"),
    dataset: str = typer.Option(_FLY.dataset, help=_harvest_help("dataset"), rich_help_panel="On the fly"),
    dataset_config: str | None = typer.Option(None, help=_harvest_help("dataset_config"), rich_help_panel="On the fly"),
    split: str = typer.Option(_FLY.dataset_split, help=_harvest_help("split"), rich_help_panel="On the fly"),
    text_column: str = typer.Option(_FLY.text_column, help=_harvest_help("text_column"), rich_help_panel="On the fly"),
    tokens: int = typer.Option(
        _FLY.tokens,
        help="Document tokens to train on per epoch (rounded down to whole batches); a shorter corpus trains on "
        "what it holds, and says so.",
        rich_help_panel="On the fly",
    ),
    context_length: int = typer.Option(
        _FLY.context_length, help=_harvest_help("context_length"), rich_help_panel="On the fly"
    ),
    forward_rows: int = typer.Option(_FLY.forward_rows, help=_harvest_help("batch_size"), rich_help_panel="On the fly"),
    model_dtype: str = typer.Option(_FLY.model_dtype, help=_harvest_help("model_dtype"), rich_help_panel="On the fly"),
    buffer: str = typer.Option(
        _FLY.buffer,
        help="Shuffle buffer per hook: vectors (262144) or bytes (512MiB, 1GiB); auto = max(131072, 4 batches). "
        "Its size, not --tokens, sets the memory; each checkpoint holds its unconsumed part.",
        rich_help_panel="On the fly",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train one or more dictionaries on a store's hook, all on the same shuffled batches; or, with
    no STORE, on activations the model computes as training goes (on the fly).

    Metrics on the held-out documents (RE, FVU, AD, L0, dead/dense fractions, γ) are printed,
    logged to log.jsonl and saved next to each dictionary with its AD–RE curve; on the fly, the
    fraction of LM loss recovered too. Kill it at any time: the same command resumes from the last
    checkpoint.
    """
    from activation_cache import ActivationStore, Split
    from interp_sae.train_from_store import choose_hook, dictionary_configs, parse_overrides, train_from_store

    with boundary("the last checkpoint is kept"):
        on_the_fly = store is None
        if on_the_fly == (model is None):
            raise TrainSetupError(
                "pass either a STORE to train from, or --model (with --dataset, --hook and --tokens) to train on "
                "the fly; not both"
                if store is not None
                else "pass a STORE to train from, or --model (with --dataset, --hook and --tokens) to train on the fly"
            )
        overrides = parse_overrides(list(set_))
        train_config = D.TrainConfig(
            epochs=epochs if epochs is not None else (1 if on_the_fly else _TRAIN.epochs),
            lr=lr,
            seed=seed,
            device=device,
            precision=cast(Any, precision),  # TrainConfig checks the value
            normalize_input=normalize_input,
            max_norm_ratio=max_norm_ratio,
            schedule=D.ScheduleConfig(kind=cast(Any, schedule), warmup_steps=warmup_steps),
            checkpoint_every=checkpoint_every,
            eval_every=eval_every,
            wandb_project=wandb_project,
            progress=not quiet,
        )
        held_out = Split(val_fraction, split_seed)
        if store is None:
            from interp_sae.train_on_the_fly import OnTheFlyConfig, train_on_the_fly

            if not hook:
                raise TrainSetupError("training on the fly needs --hook NAME (repeat it for several hooks)")
            settings = OnTheFlyConfig(
                model=cast(str, model),
                revision=revision,
                hooks=list(hook),
                dataset=dataset,
                dataset_config=dataset_config,
                dataset_split=split,
                text_column=text_column,
                tokens=tokens,
                context_length=context_length,
                forward_rows=forward_rows,
                model_dtype=model_dtype,
                batch_size=batch_size,
                buffer=buffer,
                split=held_out,
            )
            train_on_the_fly(
                settings,
                lambda d: dictionary_configs(list(arch), list(latents), d, overrides),
                out,
                train_config,
                say=typer.echo,
            )
            return
        if len(hook) > 1:
            raise TrainSetupError("a store trains one hook per run: pass --hook once")
        only_hook = hook[0] if hook else None
        opened = ActivationStore(store)
        d = opened.d(choose_hook(opened, only_hook))
        configs = dictionary_configs(list(arch), list(latents), d, overrides)
        data = DataConfig(hook=only_hook, batch_size=batch_size, split=held_out)
        train_from_store(store, configs, out, train_config, data)


@app.command()
def demo(
    out: Path = typer.Option(
        Path(_PIPELINE.out),
        "--out",
        "-o",
        help="Folder for everything the run makes. Rerun to resume or reuse finished steps.",
    ),
    model: str = typer.Option(
        _PIPELINE.model, help="Model spec, as for `harvest` (default: the offline SmolLM2-135M)."
    ),
    dataset: str = typer.Option(
        _PIPELINE.dataset, help="Corpus, as for `harvest` (default: Python's own docs, offline)."
    ),
    hook: str = typer.Option(
        _PIPELINE.hook, help="Hook to harvest and train on (default: the middle residual layer of SmolLM2)."
    ),
    tokens: int = typer.Option(_PIPELINE.tokens, help="Tokens to harvest."),
    context_length: int = typer.Option(_PIPELINE.context_length, help="Tokens per packed row."),
    arch: list[str] = typer.Option(
        _PIPELINE.architectures, "--arch", help="Dictionaries to train and compare (the first inspected is --inspect)."
    ),
    latents: int = typer.Option(_PIPELINE.latents, help="Features per dictionary (paper: 300)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help=f"Architecture hyperparameter ARCH.FIELD=VALUE, as for `train`; added to the demo's {_PIPELINE.overrides}.",
    ),
    normalize_input: bool = typer.Option(
        _PIPELINE.normalize_input, help="Scale inputs to mean norm √d while training (folded back on save)."
    ),
    epochs: int = typer.Option(_PIPELINE.epochs, help="Training epochs."),
    batch_size: int = typer.Option(_PIPELINE.batch_size, help="Training batch size."),
    loss_rows: int = typer.Option(_PIPELINE.loss_rows, help="Held-out rows for the loss-recovered measurement."),
    inspect: str = typer.Option(
        _PIPELINE.inspect_dictionary, "--inspect", help="Which trained dictionary to inspect and ablate."
    ),
    device: str = typer.Option(_PIPELINE.device, help="auto (cuda when present, else cpu), cpu, cuda, ..."),
) -> None:
    """The whole pipeline in one command: harvest a layer, train VAEase and the SAE baselines on
    the same batches, compare them (RE, FVU, AD/L0, dead features, LM loss recovered), inspect
    one into an HTML report, ablate a feature, and say where everything is."""
    from interp_sae.pipeline import PipelineConfig, merge_overrides, run_pipeline
    from interp_sae.train_from_store import parse_overrides

    with boundary("finished steps and checkpoints are kept"):
        run_pipeline(
            PipelineConfig(
                out=str(out),
                model=model,
                dataset=dataset,
                hook=hook,
                tokens=tokens,
                context_length=context_length,
                architectures=list(arch),
                latents=latents,
                normalize_input=normalize_input,
                epochs=epochs,
                overrides=merge_overrides(_PIPELINE.overrides, parse_overrides(list(set_)), list(arch)),
                batch_size=batch_size,
                loss_rows=loss_rows,
                inspect_dictionary=inspect,
                device=device,
            ),
            say=typer.echo,
        )


cli_share.register(app)
cli_inspect.register(app)
cli_intervene.register(app)

if __name__ == "__main__":
    app()
