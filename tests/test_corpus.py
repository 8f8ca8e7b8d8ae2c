import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from activation_cache import BUILTIN_PYDOC, CorpusError, CorpusSpec, iter_documents
from activation_cache.corpus import BUILTIN_PYTHON_DOCS


def test_a_folder_of_txt_jsonl_and_parquet_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("the whole file is one document")
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    pq.write_table(pa.table({"body": ["third", "fourth"]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("x,y")
    spec = CorpusSpec(str(tmp_path), text_column="body")
    assert list(iter_documents(spec)) == [
        (0, "first"),
        (1, "second"),
        (2, "the whole file is one document"),
        (3, "third"),
        (4, "fourth"),
    ]
    assert list(iter_documents(spec, start=3)) == [(3, "third"), (4, "fourth")]
    assert spec.describe()["kind"] == "local"


def test_parquet_without_the_column_names_what_it_has(tmp_path):
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(CorpusError, match=r"no text column 'text' \(found \['content'\]\); pass --text-column NAME"):
        list(iter_documents(CorpusSpec(str(tmp_path / "d.parquet"))))


def test_the_builtin_corpora_are_real_prose_in_a_fixed_order():
    topics = list(iter_documents(CorpusSpec(BUILTIN_PYDOC)))
    assert len(topics) == 79 and all(len(text) > 20 for _, text in topics)
    docs = iter_documents(CorpusSpec(BUILTIN_PYTHON_DOCS), start=79)
    index, text = next(docs)
    assert index == 79 and len(text) > 80  # the first standard-library module's docstrings
    with pytest.raises(CorpusError, match="unknown built-in corpus 'builtin:nope'"):
        list(iter_documents(CorpusSpec("builtin:nope")))
