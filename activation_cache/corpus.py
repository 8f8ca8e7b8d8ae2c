"""Text sources: where documents come from, in a fixed order, so a harvest can resume by index.

A corpus spec is one string:

* ``builtin:pydoc``          Python's own documentation topics (``pydoc_data.topics``): real
                             English prose present on every Python install, for offline runs
                             (79 documents, about 117k tokens);
* ``builtin:python-docs``    those topics, then the docstrings of the standard library's modules,
                             one document per module (about 440k tokens);
* a local path               a .txt file (one document), .jsonl (one JSON object per line),
                             .parquet, or a folder of those (files in sorted order);
* anything else              a Hugging Face ``datasets`` name, read streamed (e.g. the default
                             ``NeelNanda/pile-10k``), with ``dataset_config`` and ``split``.

Every source yields ``(doc_index, text)``; ``doc_index`` counts documents in source order and
is what the store records, so every activation traces back to its document.
"""

from __future__ import annotations

import ast
import itertools
import json
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from interp_sae.errors import ConfigError

BUILTIN_PYDOC = "builtin:pydoc"
BUILTIN_PYTHON_DOCS = "builtin:python-docs"
BUILTINS = (BUILTIN_PYDOC, BUILTIN_PYTHON_DOCS)
_SKIPPED_STDLIB_DIRS = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages"}
DEFAULT_DATASET = "NeelNanda/pile-10k"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


class CorpusError(ConfigError):
    """The corpus cannot be read as asked."""


@dataclass(frozen=True)
class CorpusSpec:
    dataset: str = DEFAULT_DATASET
    dataset_config: str | None = None
    split: str = "train"
    text_column: str = "text"

    def describe(self) -> dict:
        kind = (
            "builtin"
            if self.dataset.startswith("builtin:")
            else "local"
            if Path(self.dataset).exists()
            else "huggingface"
        )
        return {
            "kind": kind,
            # built-in corpora come from the Python install, which differs between versions
            "python": platform.python_version() if kind == "builtin" else None,
            "id": self.dataset,
            "config": self.dataset_config,
            "split": self.split,
            "text_column": self.text_column,
        }


def iter_documents(spec: CorpusSpec, start: int = 0) -> Iterator[tuple[int, str]]:
    """Documents from ``start`` on, numbered from the beginning of the source."""
    if spec.dataset.startswith("builtin:"):
        texts = _builtin(spec.dataset)
    elif Path(spec.dataset).exists():
        texts = _local(Path(spec.dataset), spec.text_column)
    else:
        texts = _huggingface(spec, start)
        return enumerate(texts, start=start)
    return itertools.islice(enumerate(texts), start, None)


def _builtin(name: str) -> Iterator[str]:
    if name not in BUILTINS:
        raise CorpusError(f"unknown built-in corpus {name!r}; the built-in corpora are {BUILTINS}")
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    if name == BUILTIN_PYTHON_DOCS:
        yield from _stdlib_docstrings()


def _stdlib_docstrings() -> Iterator[str]:
    """Docstrings of each standard-library module (parsed, never imported), longer ones only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if _SKIPPED_STDLIB_DIRS & set(path.relative_to(root).parts[:-1]) or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = (
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        )
        docs = [doc for doc in map(ast.get_docstring, nodes) if doc and len(doc) > 80]
        if docs:
            yield "\n\n".join(docs)


def _local(path: Path, column: str) -> Iterator[str]:
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file()) if path.is_dir() else [path]
    )
    if not files:
        raise CorpusError(f"{path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
    for file in files:
        if file.suffix == ".txt":
            yield _read_utf8(file)
        elif file.suffix == ".jsonl":
            yield from _jsonl(file, column)
        elif file.suffix == ".parquet":
            yield from _parquet(file, column)
        else:
            raise CorpusError(f"{file}: unsupported file type; use one of {LOCAL_SUFFIXES}")


def _read_utf8(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{file} is not UTF-8 (byte {exc.start}: {exc.reason}). Convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 {file} > {file.stem}.utf8.txt`."
        ) from exc


def _jsonl(file: Path, column: str) -> Iterator[str]:
    for line_number, line in enumerate(_read_utf8(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{file}:{line_number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or column not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(
                f"{file}:{line_number}: no text column {column!r} (found {found}); pass --text-column NAME"
            )
        yield str(record[column])


def _parquet(file: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # a dependency of `datasets`

    table = pq.ParquetFile(file)
    if column not in table.schema_arrow.names:
        raise CorpusError(
            f"{file}: no text column {column!r} (found {table.schema_arrow.names}); pass --text-column NAME"
        )
    for batch in table.iter_batches(columns=[column]):
        yield from (str(text) for text in batch.column(0).to_pylist())


def _huggingface(spec: CorpusSpec, start: int) -> Iterator[str]:
    import datasets

    try:
        stream = datasets.load_dataset(spec.dataset, spec.dataset_config, split=spec.split, streaming=True)
    except Exception as exc:  # datasets raises many types; all mean "cannot open this source"
        raise CorpusError(
            f"cannot open dataset {spec.dataset!r} (config {spec.dataset_config!r}, split "
            f"{spec.split!r}): {exc}. Offline? Use a local file or folder, or {BUILTIN_PYDOC!r}."
        ) from exc
    columns = stream.column_names
    if columns is not None and spec.text_column not in columns:
        raise CorpusError(
            f"dataset {spec.dataset!r} has no column {spec.text_column!r} (found {columns}); pass --text-column NAME"
        )
    for record in stream.skip(start) if start else stream:
        yield str(record[spec.text_column])
