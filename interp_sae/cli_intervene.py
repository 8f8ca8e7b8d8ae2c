"""`interp-sae features` and `interp-sae steer`: thin layers over interp_sae.text_features and .steering.

Model and hook default to what the dictionary recorded when it was trained
(interp_sae.provenance); a feature index it lacks is refused before the model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from interp_sae.atomic import write_json_atomic
from interp_sae.cli_common import ALLOW_OTHER_HOOK_HELP, boundary
from interp_sae.errors import ConfigError
from interp_sae.inspect_stats import RANK_MODES

_MODEL_HELP = "Model spec (HF id, local folder, .gguf, builtin:smollm2); default: the model the dictionary records."
_HOOK_HELP = "Hook the dictionary reads; default: the one it was trained on (recorded in its config.json)."
_DEVICE_HELP = "auto (cuda when present), cpu, cuda, ..."
_JSON_HELP = "Also write the full result as JSON here."


def _dictionary_and_model(dictionary_path: Path, features: list[int], model: str | None, device: str) -> tuple:
    """The dictionary and the loaded model, refusing unknown features and a missing model spec
    before the (slow) model load."""
    from activation_cache import load_model
    from dictionaries import load_dictionary
    from interp_sae.provenance import TrainedOn

    loaded = load_dictionary(dictionary_path)
    n = loaded.config.n_latents
    unknown = [j for j in features if not 0 <= j < n]
    if unknown:
        raise ConfigError(f"features {unknown} do not exist: the dictionary has features 0 … {n - 1}")
    spec = model or TrainedOn.of(loaded).model
    if spec is None:
        raise ConfigError(f"{dictionary_path} records no model: pass --model (e.g. builtin:smollm2 or an HF id)")
    return loaded, load_model(spec, device=device)


def features(
    dictionary: Path = typer.Argument(..., help="Dictionary folder (config.json + model.safetensors)."),
    text: str = typer.Option(..., "--text", help="Text to run through the model (BOS is prepended, not shown)."),
    top_n: int = typer.Option(5, help="Features listed per token, and over the whole text."),
    rank_by: str | None = typer.Option(
        None, help=f"Ranking: {' | '.join(RANK_MODES)}; default abs (= value for non-negative SAE features)."
    ),
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    hook: str | None = typer.Option(None, help=_HOOK_HELP),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    json_out: Path | None = typer.Option(None, "--json", help=_JSON_HELP),
    allow_other_hook: bool = typer.Option(False, "--allow-other-hook", help=ALLOW_OTHER_HOOK_HELP),
) -> None:
    """Which features fire on a text: each token's top features with their activations, and the
    text's top features by their largest activation."""
    from interp_sae.text_features import features_on_text

    with boundary():
        loaded, lm = _dictionary_and_model(dictionary, [], model, device)
        result = features_on_text(
            lm, loaded, text, hook=hook, top_n=top_n, rank_by=rank_by, allow_other_hook=allow_other_hook
        )
        if json_out:
            write_json_atomic(json_out, result)
    typer.echo(f"{result['architecture']} at {result['hook']} of {result['model']}, ranked by {result['rank_by']}")
    width = max(len(repr(t)) for t in result["tokens"])
    for row in result["per_token"]:
        fired = "  ".join(f"{f['feature']}:{f['activation']:+.3g}" for f in row["features"]) or "-"
        typer.echo(f"{row['position']:>4} {row['token']!r:<{width}}  {fired}")
    typer.echo("top features over the text:")
    for f in result["top_features"]:
        token = result["tokens"][f["max_position"]]
        typer.echo(
            f"  {f['feature']}: max {f['max']:+.3g} at {f['max_position']} {token!r}, "
            f"fires on {f['count']} tokens, sum {f['sum']:+.3g}"
        )
    if json_out:
        typer.echo(f"wrote {json_out}")


def steer(
    dictionary: Path = typer.Argument(..., help="Dictionary folder (config.json + model.safetensors)."),
    feature: list[int] = typer.Option(..., "--feature", "-f", help="Feature to steer; repeat for several."),
    strength: list[float] = typer.Option(
        ..., "--strength", "-s", help="Its strength, one per --feature, in order: added (or clamped to, --clamp)."
    ),
    prompt: str = typer.Option(..., "--prompt", help="Text to continue (BOS is prepended)."),
    clamp: bool = typer.Option(
        False,
        "--clamp",
        help="Set the features' activations to the strengths (keeping the reconstruction error) "
        "instead of adding strength × the feature's direction.",
    ),
    max_new_tokens: int = typer.Option(30, help="Tokens to generate at most (stops at EOS)."),
    sample: bool = typer.Option(False, "--sample", help="Sample the next token instead of taking the most likely."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (with --sample)."),
    top_k: int | None = typer.Option(None, help="Sample among the K most likely tokens only (with --sample)."),
    seed: int = typer.Option(0, help="Sampling seed; the plain and steered runs share it."),
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    hook: str | None = typer.Option(None, help=_HOOK_HELP),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    json_out: Path | None = typer.Option(None, "--json", help=_JSON_HELP),
    allow_other_hook: bool = typer.Option(False, "--allow-other-hook", help=ALLOW_OTHER_HOOK_HELP),
) -> None:
    """Generate a prompt's continuation plainly and with features steered at every document
    position (prompt and generated tokens, not BOS), from the same seed, and print both."""
    from interp_sae.steering import Intervention
    from interp_sae.steering import steer as run_steer

    with boundary():
        if len(feature) != len(strength):
            raise ConfigError(
                f"{len(feature)} --feature but {len(strength)} --strength: give one --strength per --feature, in order"
            )
        loaded, lm = _dictionary_and_model(dictionary, list(feature), model, device)
        result: dict[str, Any] = run_steer(
            lm,
            loaded,
            prompt,
            [Intervention(j, s) for j, s in zip(feature, strength)],
            mode="clamp" if clamp else "add",
            max_new_tokens=max_new_tokens,
            sample=sample,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            hook=hook,
            allow_other_hook=allow_other_hook,
        )
        if json_out:
            write_json_atomic(json_out, result)
    change = "clamped to {:g}" if clamp else "{:+g}"
    steered = ", ".join(f"feature {i['feature']} {change.format(i['value'])}" for i in result["interventions"])
    typer.echo(f"prompt:  {prompt!r}")
    typer.echo(f"plain:   {result['plain']['text']!r}")
    typer.echo(f"steered: {result['steered']['text']!r}  ({steered} at {result['hook']})")
    if json_out:
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command()(features)
    app.command()(steer)
