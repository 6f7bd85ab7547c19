"""Dataset adapters, row formats, and the errors a user's data gets."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from tunekit import DataError
from tunekit.config import DataOptions
from tunekit.data.pipeline import prepare_rows
from tunekit.testing import chat_rows, sft_rows

ROWS = sft_rows(6)


def _prep(source, eval=None, **options):
    return prepare_rows(source, eval, DataOptions(**options), seed=0)


def test_list_of_dicts_and_dict_of_columns():
    assert _prep(ROWS).format == "prompt_completion"
    cols = {"prompt": [r["prompt"] for r in ROWS], "completion": [r["completion"] for r in ROWS]}
    assert list(_prep(cols).train) == ROWS  # the same rows, in order, each column in its place


def test_hf_dataset_and_datasetdict_splits():
    ds = Dataset.from_list(ROWS)
    assert list(_prep(ds).train) == ROWS
    prepared = _prep(DatasetDict({"train": ds, "validation": ds.select(range(2))}))
    assert len(prepared.train) == 6 and len(prepared.eval) == 2
    with pytest.raises(DataError, match="no 'train' split"):
        _prep(DatasetDict({"other": ds}))


def test_pandas():
    assert list(_prep(pd.DataFrame(ROWS)).train) == ROWS


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_files(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    prepared = _prep(str(path))
    assert prepared.format == "prompt_completion" and list(prepared.train) == ROWS


def test_txt_file_is_raw_text(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Once upon a time.\n\nThe end.\n")
    prepared = _prep(str(path))
    # the whole file is one row, byte for byte (no paragraph split, no stripping)
    assert prepared.format == "text" and list(prepared.train) == [{"text": "Once upon a time.\n\nThe end.\n"}]


def test_instruction_rows_become_prompt_completion():
    prepared = _prep([{"instruction": "Reverse", "input": "a b", "output": "b a"}, {"instruction": "Say hi", "input": "", "output": "hi"}])
    assert prepared.format == "prompt_completion"
    assert prepared.train[0] == {"prompt": "Reverse\n\na b\n\n", "completion": "b a"}
    assert prepared.train[1]["prompt"] == "Say hi\n\n"


def test_chat_rows_and_column_mapping():
    assert _prep(chat_rows(3)).format == "chat"
    mapped = _prep([{"q": "x", "a": "y"}], columns={"q": "prompt", "a": "completion"})
    assert mapped.train[0] == {"prompt": "x", "completion": "y"}


def test_eval_fraction_split_is_disjoint():
    prepared = _prep(sft_rows(20), eval_fraction=0.25)
    assert len(prepared.train) == 15 and len(prepared.eval) == 5
    assert not {r["prompt"] for r in prepared.train} & {r["prompt"] for r in prepared.eval}


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ([], "empty"),
        ([{"question": "x", "answer": "y"}], r"columns \['answer', 'question'\] fit no row format.*data.columns"),
        ([{"prompt": 1, "completion": "y"}], "row 0, column 'prompt' must be a string"),
        ([{"prompt": "x", "completion": "y"}, {"prompt": 3, "completion": "z"}], "could not be read as a table|must be a string"),
        (["just a string"], "row 0 is a str"),
        ([{"messages": [{"role": "wizard", "content": "x"}]}], "unknown role 'wizard'"),
        ([{"messages": [{"role": "user"}]}], "'role' and 'content'"),
        ([{"messages": "hello"}], "non-empty list"),
        (42, "no dataset adapter understands a int"),
        ("missing.jsonl", "does not exist"),
        ("data.xlsx", "not a data file tunekit can read"),
    ],
)
def test_bad_data_is_a_clear_data_error(source, match):
    with pytest.raises(DataError, match=match):
        _prep(source)


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        _prep(str(empty))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="line 1 is not valid UTF-8"):
        _prep(str(latin))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="could not read"):
        _prep(str(broken))


def test_column_mapping_of_a_missing_column():
    with pytest.raises(DataError, match="data.columns renames"):
        _prep(ROWS, columns={"nope": "prompt"})


def test_eval_in_another_format_is_refused():
    with pytest.raises(DataError, match="eval rows are in the 'text' format"):
        _prep(ROWS, eval=[{"text": "x"}])


def test_model_path_errors(tmp_path):
    from tunekit import ModelLoadError, Tuner

    with pytest.raises(ModelLoadError, match="does not exist"):
        _ = Tuner(model=str(tmp_path / "nope")).model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        _ = Tuner(model=str(tmp_path / "empty")).model
    with pytest.raises(ModelLoadError, match=r"\.gguf file"):
        _ = Tuner(model=str(tmp_path / "m.gguf")).model


def test_fit_refuses_an_existing_run_and_save_refuses_to_overwrite(tiny_gpt2, tmp_path):
    from tests.conftest import quick

    from tunekit import TunekitError, Tuner

    out = tmp_path / "run"
    tuner = Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=1))
    tuner.fit(ROWS)
    with pytest.raises(TunekitError, match="already holds a tunekit fit directory; .*resume=True"):
        tuner.fit(ROWS)
    tuner.fit(ROWS, overwrite=True)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    with pytest.raises(TunekitError, match="holds files tunekit did not write.*mine.txt"):
        tuner.save(tmp_path / "keep")
    with pytest.raises(TunekitError, match="holds files tunekit did not write.*mine.txt"):
        tuner.save(tmp_path / "keep", overwrite=True)
    assert (tmp_path / "keep" / "mine.txt").read_text() == "precious"
    assert (out / "tunekit.yaml").is_file() and (out / "result.json").is_file()
    assert Tuner.load(out).config.model == str(tiny_gpt2)
