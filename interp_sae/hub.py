"""Share dictionary folders through the Hugging Face Hub.

A dictionary is a folder holding `config.json` and `model.safetensors` (maybe also its
metrics.json and AD-RE curve). `push_to_hub` uploads one or several of them in one commit, with a generated
model card and index; `download` brings one back into the Hugging Face cache and returns its folder;
`from_pretrained` downloads and loads it.
Only data and figures are shared (JSON, safetensors, CSV, PNG) and only JSON and safetensors are
read back, so nothing downloaded can execute code.

The token comes from the usual places (the argument, HF_TOKEN, `hf auth login`); the endpoint from
HF_ENDPOINT; HF_HUB_OFFLINE=1 serves downloads from the cache. Failures raise `HubError`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2  # the HTTP library of huggingface_hub 2.x: its transport errors mean "unreachable"
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    HfApi,
    constants,
    get_token,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open

import dictionaries
from dictionaries.base import Dictionary
from dictionaries.io import CONFIG_FILE, WEIGHTS_FILE
from interp_sae import model_card
from interp_sae.errors import InterpSAEError

# Data and figures only (a trained dictionary's folder also holds its AD-RE curve as CSV and PNG):
# nothing that can carry code, like pickle.
SHARED_SUFFIXES = (".json", ".safetensors", ".csv", ".png")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # what torch.save and pickle write
SAELENS_CONFIG_FILE = "cfg.json"  # marks a folder in SAELens's layout (see interp_sae.saelens)
DEFAULT_COMMIT_MESSAGE = "Upload dictionaries with interp-sae"
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN"


class HubError(InterpSAEError, RuntimeError):
    """A Hub operation or a dictionary folder failed; the message names the problem and the fix."""


@dataclass(frozen=True)
class DictionaryFolder:
    folder: Path
    subfolder: str | None  # where it goes in the repo; None for the repo root
    config: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        metrics_path = self.folder / model_card.METRICS_FILE
        metrics = _read_json(metrics_path) if metrics_path.is_file() else None
        return model_card.summarize(self.config, self.subfolder, metrics if isinstance(metrics, dict) else None)


def push_to_hub(
    folders_or_root: str | Path | Sequence[str | Path],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    token: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload dictionaries to `repo_id` in one commit, with a model card (README.md) and index.json.

    `folders_or_root` is one dictionary folder (uploaded at the repo root), a folder whose
    subfolders are dictionaries (each uploaded under its name), or a list of dictionary folders
    (each under its name). The repo is created if needed (`private` applies only then), and so is
    the branch `revision`. Dictionaries already in the repo's index stay listed in the card.
    """
    dictionaries = find_dictionaries(folders_or_root)
    operations = [CommitOperationAdd(path, str(local)) for d in dictionaries for path, local in _shared_files(d)]
    token = token or get_token()
    if token is None:
        raise HubError(f"No Hugging Face token found, and pushing needs one with write access: {LOGIN_HINT}.")
    api = HfApi(token=token)
    with _hub_errors(repo_id, revision, downloading=False):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, constants.DEFAULT_REVISION):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        entries = model_card.merge_entries(
            _remote_index_entries(repo_id, revision, token),
            [d.summary() for d in dictionaries],
        )
        index = json.dumps(model_card.build_index(entries), indent=2).encode() + b"\n"
        card = model_card.render_card(repo_id, entries).encode()
        operations += [
            CommitOperationAdd(model_card.INDEX_FILE, index),
            CommitOperationAdd(model_card.CARD_FILE, card),
        ]
        return api.create_commit(
            repo_id, operations, commit_message=commit_message, revision=revision, create_pr=create_pr
        )


def download(
    repo_id_or_path: str | Path,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> Path:
    """The local folder of one dictionary: a local path as given, or a Hub repo's dictionary,
    downloaded into the Hugging Face cache (only its files, the index and the card).

    Raises HubError when the folder is not an intact dictionary (config.json that parses,
    model.safetensors whose header and size agree) or the Hub cannot provide it.
    """
    if subfolder is not None and (Path(subfolder).is_absolute() or ".." in Path(subfolder).parts):
        raise HubError(f"subfolder must be a relative path inside the repository, got {subfolder!r}.")
    local = Path(repo_id_or_path).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        check_dictionary_folder(folder)
        return folder
    repo_id = str(repo_id_or_path)
    if _looks_like_path(repo_id):
        raise HubError(f"Local path {local} does not exist (and it is not a Hub repo id of the form 'org/name').")
    allow = [f"{subfolder}/*", model_card.INDEX_FILE, model_card.CARD_FILE] if subfolder else None
    ignore = None if subfolder else ["*/*"]  # without a subfolder: the root's files only
    with _hub_errors(repo_id, revision, downloading=True):
        snapshot = Path(
            snapshot_download(repo_id, revision=revision, token=token, allow_patterns=allow, ignore_patterns=ignore)
        )
    folder = snapshot / subfolder if subfolder else snapshot
    if not (folder / CONFIG_FILE).is_file():
        raise HubError(_no_dictionary_message(repo_id, subfolder, snapshot))
    check_dictionary_folder(folder)
    return folder


def from_pretrained(
    repo_id_or_path: str | Path,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    device: str = "cpu",
) -> Dictionary:
    """Download a dictionary (see `download`) and load it onto `device`.

    Raises HubError when it cannot be downloaded or loaded (e.g. written by a newer interp-sae).
    """
    folder = download(repo_id_or_path, subfolder=subfolder, revision=revision, token=token)
    return load_folder(folder, device=device)


def load_folder(folder: Path, device: str = "cpu") -> Dictionary:
    """Load a dictionary folder that `download` returned; HubError when its contents do not load."""
    try:
        return dictionaries.load_dictionary(folder, device=device)
    except (ValueError, TypeError, KeyError) as error:  # what load_dictionary raises for a config it cannot use
        raise HubError(f"Cannot load the dictionary in {folder}: {error}") from error


def find_dictionaries(folders_or_root: str | Path | Sequence[str | Path]) -> list[DictionaryFolder]:
    """The dictionaries to push, checked, with their place in the repo (see `push_to_hub`)."""
    if isinstance(folders_or_root, (str, Path)):
        root = Path(folders_or_root)
        if (root / CONFIG_FILE).is_file():
            return [DictionaryFolder(root, None, check_dictionary_folder(root))]
        folders = sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []
        if not folders:
            raise HubError(
                f"No dictionary in {root}: expected {CONFIG_FILE} and {WEIGHTS_FILE} there, or in its subfolders."
            )
    else:
        folders = [Path(folder) for folder in folders_or_root]
        names = [folder.name for folder in folders]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise HubError(f"Dictionary folders must have distinct names (their subfolders in the repo): {duplicates}.")
    return [DictionaryFolder(folder, folder.name, check_dictionary_folder(folder)) for folder in folders]


def check_dictionary_folder(folder: Path) -> dict[str, Any]:
    """The parsed config.json of `folder`, after checking that its files are intact; HubError otherwise.

    This checks the container, not the contents: that config.json is a JSON object and that every
    safetensors header parses and covers the file exactly (a truncated download fails here).
    """
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise HubError(f"{folder} is not a dictionary folder: {required.name} is missing{_found_instead(folder)}.")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise HubError(f"{config_path} must hold a JSON object, not {type(config).__name__}.")
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(path, framework="numpy"):  # reads the header only; no tensor is loaded
                pass
        except SafetensorError as error:
            raise HubError(
                f"{path} is not a valid safetensors file ({error}): it is corrupt or truncated. "
                "Download it again, or re-save it if it is yours."
            ) from error
    return config


def pickle_hint(folder: Path) -> str:
    """For error messages: what pickle files `folder` holds instead of safetensors ("" for none)."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if not pickles:
        return ""
    return f"; found {pickles}: pickle files, which interp-sae never loads (unpickling can run code). Convert them to safetensors"


def _found_instead(folder: Path) -> str:
    if (folder / SAELENS_CONFIG_FILE).is_file():
        return f"; it holds SAELens's layout ({SAELENS_CONFIG_FILE}): convert it with `interp-sae import-saelens`"
    return pickle_hint(folder)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HubError(f"{path} is not valid JSON ({error}); the file is corrupt.") from error


def _shared_files(dictionary: DictionaryFolder) -> Iterator[tuple[str, Path]]:
    """(path in repo, local file) for the dictionary's files; hidden files are skipped."""
    prefix = f"{dictionary.subfolder}/" if dictionary.subfolder else ""
    files = sorted(
        path
        for path in dictionary.folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(dictionary.folder).parts)
    )
    if unshared := [str(path) for path in files if path.suffix not in SHARED_SUFFIXES]:
        raise HubError(
            f"Only {', '.join(SHARED_SUFFIXES)} files are shared (no pickle, nothing executable); "
            f"move these out of the dictionary folder or convert them: {unshared}."
        )
    for path in files:
        in_repo = prefix + path.relative_to(dictionary.folder).as_posix()
        if in_repo in (model_card.INDEX_FILE, model_card.CARD_FILE):
            raise HubError(f"{path} would overwrite the generated {in_repo}; rename or remove it.")
        yield in_repo, path


def _remote_index_entries(repo_id: str, revision: str | None, token: str) -> list[dict[str, Any]]:
    """The entries of the index already at `revision`, or [] for a repo without one."""
    with tempfile.TemporaryDirectory() as cache_dir:  # a throwaway read: keep it out of the user's cache
        try:
            path = hf_hub_download(repo_id, model_card.INDEX_FILE, revision=revision, token=token, cache_dir=cache_dir)
        except RemoteEntryNotFoundError:
            return []
        try:
            return model_card.index_entries(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, ValueError) as error:
            raise HubError(
                f"{repo_id} has an {model_card.INDEX_FILE} this version cannot update ({error}); "
                "push to a new repository or branch."
            ) from error


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _no_dictionary_message(repo_id: str, subfolder: str | None, snapshot: Path) -> str:
    index_path = snapshot / model_card.INDEX_FILE
    listed = []
    if index_path.is_file():
        with contextlib.suppress(
            json.JSONDecodeError, ValueError, KeyError, TypeError
        ):  # the message is right without it
            listed = [e["subfolder"] for e in model_card.index_entries(json.loads(index_path.read_text()))]
    where = f"in subfolder '{subfolder}'" if subfolder else "at the root"
    available = ", ".join(repr(s) for s in listed if s) or "none listed"
    return f"No dictionary {where} of '{repo_id}' (no {CONFIG_FILE}). Subfolders with dictionaries: {available}; pass subfolder=..."


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, *, downloading: bool) -> Iterator[None]:
    """Turn huggingface_hub's failures into HubErrors that say what went wrong and what to do."""
    endpoint = constants.ENDPOINT
    try:
        yield
    except GatedRepoError as error:  # before RepositoryNotFoundError, its base class
        raise HubError(
            f"Repository '{repo_id}' is gated: request access at {endpoint}/{repo_id} with the account of your token."
        ) from error
    except RepositoryNotFoundError as error:
        raise HubError(
            f"Repository '{repo_id}' not found on {endpoint}, or it is private and your token cannot read it. "
            f"Check the repo id; for a private repo, {LOGIN_HINT} with a token that can read it."
        ) from error
    except RevisionNotFoundError as error:
        raise HubError(f"Revision '{revision}' not found in repository '{repo_id}' on {endpoint}.") from error
    except HfHubHTTPError as error:
        status = error.response.status_code
        if status == 401:
            message = f"The Hub at {endpoint} rejected your token (401): it is invalid or expired; {LOGIN_HINT}."
        elif status == 403:
            message = (
                f"Your token may not write to '{repo_id}' (403: {error.server_message}); use one with write access."
            )
        else:
            message = f"The Hub at {endpoint} answered {status} for '{repo_id}': {error.server_message or error}"
        raise HubError(message) from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError) as error:
        what = f"'{repo_id}'" + (f" (revision '{revision}')" if revision else "")
        if constants.is_offline_mode():
            if not downloading:
                raise HubError("HF_HUB_OFFLINE=1 is set, and pushing needs the network: unset it.") from error
            raise HubError(
                f"HF_HUB_OFFLINE=1 is set and {what} is not (fully) in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}): download it once with network access, or unset HF_HUB_OFFLINE."
            ) from error
        if not _caused_by(error, httpx2.TransportError):  # e.g. the Hub answered 5xx and nothing is cached
            raise HubError(f"Could not get {what} from {endpoint}, and it is not in the cache: {error}") from error
        message = f"Cannot reach the Hub: no network, or endpoint {endpoint} is unreachable."
        if downloading:
            message += f" {what} is not in the cache either; once it is, set HF_HUB_OFFLINE=1 to use the cache."
        raise HubError(message) from error


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False
