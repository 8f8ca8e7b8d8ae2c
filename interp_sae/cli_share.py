"""`interp-sae push | pull | export-saelens | import-saelens`: thin commands over `interp_sae.hub`
and `interp_sae.saelens`. `interp_sae.cli` adds them to its app through `register`."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from interp_sae import hub, saelens
from interp_sae.cli_common import boundary
from interp_sae.errors import ConfigError

TOKEN_HELP = "Hugging Face token. Default: HF_TOKEN, then the token `hf auth login` stored (prefer those: a token on the command line shows in the process list)."


def register(app: typer.Typer) -> None:
    app.command("push")(push)
    app.command("pull")(pull)
    app.command("export-saelens")(export_saelens)
    app.command("import-saelens")(import_saelens)


def push(
    repo_id: str = typer.Argument(
        ..., help="Hub repository 'org/name' ('name' alone: your own namespace); created if it does not exist."
    ),
    folders: list[Path] = typer.Argument(
        ...,
        help="One dictionary folder (uploaded at the repo root), a folder whose subfolders are dictionaries "
        "(each uploaded under its name, e.g. a training run), or several dictionary folders (each under its name).",
    ),
    private: bool = typer.Option(
        False, "--private", help="Create the repository as private. Has no effect on a repository that exists."
    ),
    revision: str | None = typer.Option(None, help="Branch to commit to, created from main if missing. Default: main."),
    message: str = typer.Option(hub.DEFAULT_COMMIT_MESSAGE, "--message", "-m", help="Commit message."),
    token: str | None = typer.Option(None, help=TOKEN_HELP + " It needs write access."),
) -> None:
    """Upload dictionaries to the Hugging Face Hub in one commit, with a generated model card (README.md) and index.json.

    Only .json, .safetensors, .csv and .png files are uploaded; anything else (a pickle) is refused.
    Dictionaries already in the repository stay listed in the card.
    """
    source = folders[0] if len(folders) == 1 else folders
    with boundary():
        commit = hub.push_to_hub(
            source, repo_id, private=private, revision=revision, commit_message=message, token=token
        )
    typer.echo(commit.commit_url)


def pull(
    repo_id_or_path: str = typer.Argument(..., help="Hub repository 'org/name', or a local dictionary folder."),
    subfolder: str | None = typer.Option(
        None, help="The dictionary's folder inside the repository (the model card lists them). Default: the repo root."
    ),
    revision: str | None = typer.Option(None, help="Branch, tag or commit. Default: main."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Copy the dictionary's files into this folder (new or empty). Default: leave them in the Hugging Face cache.",
    ),
    token: str | None = typer.Option(None, help=TOKEN_HELP + " Needed for private repositories only."),
) -> None:
    """Download one dictionary into the Hugging Face cache and check that it loads; print its folder.

    With HF_HUB_OFFLINE=1 it is served from the cache, without the network.
    """
    with boundary():
        folder = hub.download(repo_id_or_path, subfolder=subfolder, revision=revision, token=token)
        model = hub.load_folder(folder)
        if out is not None:
            if out.exists() and any(out.iterdir()):
                raise hub.HubError(f"--out {out} is not empty: choose a new or empty folder.")
            shutil.copytree(folder, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
            folder = out
    typer.echo(f"{model.architecture}: d={model.config.d}, κ={model.config.n_latents}", err=True)
    typer.echo(folder)


def export_saelens(
    dictionary: Path = typer.Argument(..., help="Dictionary folder (config.json + model.safetensors)."),
    out: Path = typer.Argument(
        ..., help="Folder to write cfg.json and sae_weights.safetensors to; SAELens loads it with SAE.load_from_disk."
    ),
    inspection: Path | None = typer.Option(
        None,
        help="inspection.json (or its folder) that `interp-sae inspect` wrote for this dictionary: its feature "
        "frequencies become sparsity.safetensors (log10(frequency + 1e-10)), and its hook and model the defaults below.",
    ),
    hook_name: str | None = typer.Option(
        None,
        help="TransformerLens hook the dictionary reads, e.g. blocks.3.hook_resid_post. Default: from --inspection, else config.json's metadata.",
    ),
    model_name: str | None = typer.Option(
        None,
        help="Model the activations came from, e.g. EleutherAI/pythia-70m-deduped. Default: from --inspection, else config.json's metadata.",
    ),
    dataset_path: str | None = typer.Option(
        None, help="Dataset the activations came from. Default: from config.json's metadata."
    ),
    context_size: int | None = typer.Option(
        None, help="Tokens per context the activations were harvested with. Default: from config.json's metadata."
    ),
) -> None:
    """Export a dictionary to SAELens's layout (standard: ReLU SAEs; topk: TopK SAEs; jumprelu: JumpReLU,
    BatchTopK and Matryoshka with their thresholds; gated: Gated SAEs).

    The input scale is folded into the weights, so SAELens reads raw activations. VAEase and the
    VAE are refused: SAELens cannot represent them.
    """
    given = {
        "hook_name": hook_name,
        "model_name": model_name,
        "dataset_path": dataset_path,
        "context_size": context_size,
    }
    with boundary():
        frequency, from_inspection = _read_inspection(inspection) if inspection else (None, {})
        metadata = {**from_inspection, **{key: value for key, value in given.items() if value is not None}}
        saelens.export_saelens(dictionary, out, firing_frequency=frequency, metadata=metadata)
    typer.echo(out)


def import_saelens(
    folder: Path = typer.Argument(
        ..., help="SAELens folder: cfg.json + sae_weights.safetensors, architecture standard, topk, jumprelu or gated."
    ),
    out: Path = typer.Argument(..., help="Dictionary folder to write (config.json + model.safetensors)."),
) -> None:
    """Convert a SAELens SAE into a dictionary folder that interp-sae's tools read.

    standard becomes sae_l1 (a plain ReLU SAE), topk becomes topk_aux (b_dec subtracted from the
    input) or sae_topk, jumprelu (also how SAELens saves BatchTopK and Matryoshka) becomes jumprelu,
    gated becomes gated. Only JSON and safetensors are read: pickled weights are refused.
    """
    with boundary():
        saelens.import_saelens(folder, out)
    typer.echo(out)


def _read_inspection(path: Path) -> tuple[list[float], dict[str, str | None]]:
    """Feature frequencies, and hook and model, from an inspection (docs/INSPECT_SCHEMA.md)."""
    from interp_sae.inspector import read_inspection  # the inspector's imports are heavy: only when asked

    results = read_inspection(path)
    try:
        return [feature["frequency"] for feature in results["features"]], {
            "hook_name": results["hook"],
            "model_name": results["model"],
        }
    except (KeyError, TypeError) as error:
        raise ConfigError(f"{path} is not an inspection written by `interp-sae inspect` (no {error}).") from error
