"""`interp-sae inspect` and `interp-sae ablate`: thin layers over interp_sae.inspector and .ablation.

Hook, held-out split and model default to what the dictionary recorded when it was trained
(interp_sae.provenance): nothing is asked twice.
"""

from __future__ import annotations

from pathlib import Path

import typer

from interp_sae.atomic import write_json_atomic
from interp_sae.cli_common import ALLOW_OTHER_HOOK_HELP, ALLOW_OTHER_STORE_HELP, boundary
from interp_sae.errors import ConfigError
from interp_sae.inspect_stats import RANK_MODES
from interp_sae.inspector import InspectConfig
from interp_sae.splice import ABLATION_MODES

_INSPECT = InspectConfig()
_MODEL_HELP = (
    "Model spec (HF id, local folder, .gguf, builtin:smollm2); default: the model the store was harvested with."
)
_HOOK_HELP = "Hook the dictionary reads; default: the one it was trained on (recorded in its config.json)."


def _load_model(spec: str, device: str):
    from activation_cache import load_model

    return load_model(spec, device=device)


def inspect(
    store: Path = typer.Argument(..., help="Activation store folder (the one the dictionary was trained on)."),
    dictionary: Path = typer.Argument(..., help="Dictionary folder (config.json + model.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: inspection.json, report.html and features/."),
    hook: str | None = typer.Option(None, help=_HOOK_HELP),
    split: str = typer.Option(
        _INSPECT.split,
        help="Side of the dictionary's held-out split to inspect: validation (documents it never trained on), "
        "train or all. The split itself is the one the dictionary recorded.",
    ),
    top_k: int = typer.Option(_INSPECT.top_k, help="Top activating tokens kept per feature."),
    window: int = typer.Option(_INSPECT.window, help="Context tokens either side of each top token."),
    rank_by: str | None = typer.Option(
        _INSPECT.rank_by,
        help=f"Ranking of top tokens: {' | '.join(RANK_MODES)}; default abs (= value for non-negative SAE features).",
    ),
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    no_model: bool = typer.Option(False, "--no-model", help="Skip logit effects, loss recovered and ablation."),
    ablate: list[int] = typer.Option([], "--ablate", help="Feature to ablate on its own top contexts; repeatable."),
    ablation_mode: str = typer.Option(_INSPECT.ablation_mode, help=" | ".join(ABLATION_MODES) + "."),
    loss_rows: int = typer.Option(_INSPECT.loss_rows, help="Held-out rows for loss recovered and loss effects."),
    quantile_examples: int = typer.Option(
        _INSPECT.quantile_examples,
        help="Examples in each of the middle and low activation-quantile sections (0: none).",
    ),
    neighbours: int = typer.Option(
        _INSPECT.neighbours, help="Neighbours per feature, by decoder cosine and by co-firing (0: none)."
    ),
    cofiring_tokens: int = typer.Option(
        _INSPECT.cofiring_tokens, help="Vectors of the inspected split over which co-firing is counted."
    ),
    batch_size: int = typer.Option(_INSPECT.batch_size, help="Vectors per batch of the statistics pass."),
    include_long_vectors: bool = typer.Option(
        _INSPECT.include_long_vectors,
        "--include-long-vectors",
        help="Also inspect the vectors longer than the norm cap the dictionary was trained under (train "
        "--max-norm-ratio; massive activations it never saw, left out by default and counted).",
    ),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda, ..."),
    allow_other_store: bool = typer.Option(False, "--allow-other-store", help=ALLOW_OTHER_STORE_HELP),
    allow_other_hook: bool = typer.Option(False, "--allow-other-hook", help=ALLOW_OTHER_HOOK_HELP),
) -> None:
    """Statistics, top and quantile contexts, neighbours, logit and loss effects, loss recovered and
    ablations of every feature; writes inspection.json (schema: docs/INSPECT_SCHEMA.md) and the
    report: report.html (searchable, sortable feature list) and features/<j>.html (one page each)."""
    from activation_cache import ActivationStore
    from dictionaries import load_dictionary
    from interp_sae.inspector import inspect as run_inspect
    from interp_sae.inspector import write_inspection
    from interp_sae.provenance import resolve
    from interp_sae.report import write_report
    from interp_sae.runtime import resolve_device

    with boundary():
        opened = ActivationStore(store)
        loaded = load_dictionary(dictionary)
        allowed = {"allow_other_store": allow_other_store, "allow_other_hook": allow_other_hook}
        hook, _ = resolve(loaded, opened, hook, **allowed)  # before the model: a mistake fails in a second
        lm = None if no_model else _load_model(model or opened.manifest.model["id"], device)
        loaded = loaded.to(lm.device if lm is not None else resolve_device(device))
        config = InspectConfig(
            split=split,
            top_k=top_k,
            window=window,
            rank_by=rank_by,
            batch_size=batch_size,
            loss_rows=loss_rows,
            quantile_examples=quantile_examples,
            neighbours=neighbours,
            cofiring_tokens=cofiring_tokens,
            ablate=list(ablate),
            ablation_mode=ablation_mode,
            include_long_vectors=include_long_vectors,
        )
        results = run_inspect(opened, loaded, hook, config, lm=lm, dictionary_path=str(dictionary), **allowed)
        json_path, report_path = write_inspection(results, out), write_report(results, out)
    left_out = (
        f" ({results['tokens_left_out']:,} longer than the dictionary's norm cap left out; --include-long-vectors "
        "keeps them)"
        if results["tokens_left_out"]
        else ""
    )
    typer.echo(
        f"{results['n_features']} features over {results['tokens']:,} tokens{left_out} → {json_path}, {report_path}"
    )
    if results["downstream"]:
        typer.echo(f"fraction of loss recovered: {results['downstream']['fraction_recovered']}")


def ablate(
    dictionary: Path = typer.Argument(..., help="Dictionary folder."),
    feature: list[int] = typer.Option(
        ..., "--feature", "-f", help="Feature to ablate; repeat for several (ablated together)."
    ),
    text: list[str] = typer.Option([], "--text", help="Text to run; repeatable."),
    texts_file: Path | None = typer.Option(None, help="File with one text per line."),
    top_contexts: bool = typer.Option(
        False, "--top-contexts", help="Run on the features' own top contexts (needs --inspection and --store)."
    ),
    store: Path | None = typer.Option(
        None,
        help="Store the dictionary was trained on: default model, top contexts, and feature means for --mode mean.",
    ),
    inspection: Path | None = typer.Option(
        None, help="An `inspect` output (folder or JSON): feature means and top contexts."
    ),
    model: str | None = typer.Option(
        None, help=_MODEL_HELP.replace("the store", "--store (else the model the dictionary records)")
    ),
    hook: str | None = typer.Option(None, help=_HOOK_HELP),
    mode: str = typer.Option("zero", help="zero | mean (the feature's mean activation on the store)."),
    no_error: bool = typer.Option(
        False,
        "--no-error",
        help="Splice the bare reconstruction instead of adding back "
        "its error (then the baseline is the spliced model).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the full result as JSON here."),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda, ..."),
    allow_other_store: bool = typer.Option(False, "--allow-other-store", help=ALLOW_OTHER_STORE_HELP),
    allow_other_hook: bool = typer.Option(False, "--allow-other-hook", help=ALLOW_OTHER_HOOK_HELP),
) -> None:
    """Ablate features inside the running model: Δ loss and Δ next-token logit per token, and the
    predictions that move most."""
    with boundary():
        result = _run_ablation(
            dictionary,
            list(feature),
            list(text),
            texts_file,
            top_contexts,
            store,
            inspection,
            model,
            hook,
            mode,
            not no_error,
            device,
            {"allow_other_store": allow_other_store, "allow_other_hook": allow_other_hook},
        )
    for sequence in result["sequences"]:
        deltas = [p["delta_loss"] for p in sequence["predictions"]]
        typer.echo(f"{sequence['text']!r}: mean Δ loss {sum(deltas) / max(len(deltas), 1):+.5f}")
        for moved in sequence["most_moved"][:3]:
            typer.echo(
                f"  {moved['token']!r} → {moved['next_token']!r}: KL {moved['kl']:.3g}, "
                f"rose {[r['token'] for r in moved['rose'][:3]]}, fell {[r['token'] for r in moved['fell'][:3]]}"
            )
    typer.echo(f"mean Δ loss per token over all texts: {result['mean_delta_loss']}")
    if out:
        write_json_atomic(out, result)
        typer.echo(f"wrote {out}")


def _run_ablation(
    dictionary_path,
    features,
    texts,
    texts_file,
    top_contexts,
    store_path,
    inspection_path,
    model,
    hook,
    mode,
    with_error,
    device,
    allowed,
):
    from activation_cache import ActivationStore
    from dictionaries import load_dictionary
    from interp_sae.ablation import ablate as run_ablation
    from interp_sae.ablation import context_sequence, text_sequence
    from interp_sae.inspector import read_inspection
    from interp_sae.provenance import TrainedOn, resolve

    store = ActivationStore(store_path) if store_path else None
    inspected = read_inspection(inspection_path) if inspection_path else None
    loaded = load_dictionary(dictionary_path)
    unknown = [j for j in features if not 0 <= j < loaded.config.n_latents]
    if unknown:
        raise ConfigError(
            f"features {unknown} do not exist: the dictionary has features 0 … {loaded.config.n_latents - 1}"
        )
    hook, split = resolve(loaded, store, hook or (inspected["hook"] if inspected else None), **allowed)
    model = model or (store.manifest.model["id"] if store else TrainedOn.of(loaded).model)
    if model is None:
        raise ConfigError("no model: the dictionary records none; pass --model, or --store")
    lm = _load_model(model, device)
    loaded = loaded.to(lm.device)
    if texts_file:
        texts += [line for line in texts_file.read_text().splitlines() if line.strip()]
    sequences = [text_sequence(lm, t) for t in texts]
    if top_contexts:
        if not (inspected and store):
            raise ConfigError("--top-contexts needs --inspection (which tokens) and --store (their rows)")
        window = inspected["config"]["window"]
        sequences += [
            context_sequence(store, e["index"], window)
            for j in features
            for e in inspected["features"][j]["top_examples"]
        ]
    if not sequences:
        raise ConfigError("nothing to run: pass --text, --texts-file or --top-contexts")
    means = None
    if mode == "mean":
        means = _feature_means(loaded, inspected, store, hook, split)
    return run_ablation(lm, loaded, hook, sequences, features, mode=mode, means=means, with_error=with_error)


def _feature_means(dictionary, inspected, store, hook, split):
    import torch

    from interp_sae.inspect_stats import feature_statistics

    if inspected:
        return torch.tensor([f["mean"] for f in inspected["features"]])
    if store is None:
        raise ConfigError("--mode mean needs the features' means: pass --inspection (an `inspect` output) or --store")
    cap = dictionary.metadata.get("max_input_norm")  # positions above it are not ablated (splice.zero_hook)
    return feature_statistics(store, dictionary, hook, side="train", split=split, top_k=0, max_norm=cap).mean


def register(app: typer.Typer) -> None:
    app.command()(inspect)
    app.command()(ablate)
