"""Data from the datasets ecosystem: load_dataset mappings, save_to_disk folders, and streams."""

from __future__ import annotations

import json
import socket

import pytest
from datasets import Dataset, DatasetDict

from conftest import quick
from tunekit import ConfigError, DataError, TuneConfig, Tuner
from tunekit.config import DataOptions
from tunekit.data.pipeline import is_stream, prepare_rows
from tunekit.testing import sft_rows

ROWS = sft_rows(8)


def _prep(source, eval=None, **options):
    return prepare_rows(source, eval, DataOptions(**options), seed=0)


def _tuner(model, tmp_path, name, **training):
    # never: these tests are about where rows come from, on either tiny model alike
    return Tuner(model=str(model), strategy="full", data={"chat_template": "never"},
                 output_dir=str(tmp_path / name), training=quick(batch_size=4, **training))


def _lengths(tuner, rows):
    """Token counts of ``rows`` as the run tokenizes them (the figure tokens_seen sums)."""
    return list(tuner._prepare(rows, split_eval=False).train["length"])


def _jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    return path


def test_mapping_with_local_json_files_trains_on_every_row(tiny_gpt2, tmp_path):
    source = {"path": "json", "data_files": str(_jsonl(tmp_path)), "split": "train"}
    assert list(_prep(source).train) == ROWS
    tuner = _tuner(tiny_gpt2, tmp_path, "r", max_steps=None, epochs=1)
    result = tuner.fit(source)
    assert result.steps == 2  # 8 rows, batches of 4, one epoch
    assert result.tokens_seen == sum(_lengths(tuner, ROWS))  # every row once, no other


def test_mapping_split_slicing_and_a_folder_of_data_files(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    assert list(_prep({"path": str(folder), "split": "train[:3]"}).train) == ROWS[:3]


def test_mapping_unknown_key_and_bad_values_are_refused(tmp_path):
    with pytest.raises(DataError, match="splt"):
        _prep({"path": "json", "data_files": str(_jsonl(tmp_path)), "splt": "train"})
    with pytest.raises(ConfigError, match="data.train"):
        TuneConfig(model="x", data={"train": {"path": "org/name", "streamin": True}})
    config = TuneConfig(model="x", data={"train": {"path": "org/name", "split": "train[:90%]"}})
    assert config.data.train.split == "train[:90%]"
    assert config.model_dump(mode="json")["data"]["train"]["path"] == "org/name"  # saved as given


def test_unknown_hub_dataset_offline_fails_at_once_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lookups = []

    def no_network(*args, **kwargs):  # the hub must not even be looked up, let alone retried
        lookups.append(args[0] if args else None)
        raise OSError("network disabled in this test")

    import datasets.config

    before = datasets.config.HF_HUB_OFFLINE
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DataError) as info:
        _prep({"path": "someorg/no-such-dataset", "split": "train"})
    message = str(info.value)
    assert "someorg/no-such-dataset" in message and "HF_HUB_OFFLINE" in message and "save_to_disk" in message
    assert lookups == []
    assert datasets.config.HF_HUB_OFFLINE == before  # offline for that one call only


def test_save_to_disk_datasetdict_gives_train_and_eval(tiny_gpt2, tmp_path):
    ds = Dataset.from_list(ROWS)
    DatasetDict({"train": ds, "validation": ds.select(range(2))}).save_to_disk(str(tmp_path / "saved"))
    prepared = _prep(str(tmp_path / "saved"))
    assert list(prepared.train) == ROWS and list(prepared.eval) == ROWS[:2]
    tuner = _tuner(tiny_gpt2, tmp_path, "r", max_steps=None, epochs=1)
    result = tuner.fit(str(tmp_path / "saved"))
    assert result.steps == 2 and result.eval_loss is not None  # the validation split was evaluated
    assert result.tokens_seen == sum(_lengths(tuner, ROWS))


def test_save_to_disk_dataset_and_a_plain_folder(tmp_path):
    Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "one"))
    assert list(_prep(str(tmp_path / "one")).train) == ROWS[:3]
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="save_to_disk.*'path'"):
        _prep(str(tmp_path / "plain"))


def test_iterable_dataset_trains_on_the_rows_it_streams(tiny_gpt2, tmp_path, caplog):
    stream = Dataset.from_list(ROWS).to_iterable_dataset()
    prepared = _prep(stream)
    assert is_stream(prepared.train) and list(prepared.train) == ROWS
    tuner = _tuner(tiny_gpt2, tmp_path, "r", max_steps=2, group_by_length=True)
    with caplog.at_level("INFO", logger="tunekit"):
        result = tuner.fit(stream)
    assert result.steps == 2
    assert result.tokens_seen == sum(_lengths(tuner, ROWS))  # 2 steps x 4 rows: the 8 rows, in stream order
    assert "group_by_length does not apply to a stream" in caplog.text
    assert "streamed training rows" in (tmp_path / "r" / "README.md").read_text()
    assert json.loads((tmp_path / "r" / "result.json").read_text())["steps"] == 2


def test_streaming_mapping_and_what_a_stream_refuses(tiny_gpt2, tmp_path):
    source = {"path": "json", "data_files": str(_jsonl(tmp_path)), "streaming": True}
    assert is_stream(_prep(source).train)
    tuner = _tuner(tiny_gpt2, tmp_path, "r", max_steps=1)
    result = tuner.fit(source)
    assert result.steps == 1 and result.tokens_seen == sum(_lengths(tuner, ROWS[:4]))
    with pytest.raises(ConfigError, match="training.max_steps"):
        _tuner(tiny_gpt2, tmp_path, "r2", max_steps=None).fit(source)
    with pytest.raises(ConfigError, match="eval_fraction"):
        _prep(source, eval_fraction=0.5)
    with pytest.raises(DataError, match="eval data is a stream"):
        _prep(ROWS, Dataset.from_list(ROWS).to_iterable_dataset())


def test_stream_fingerprint_records_its_first_rows(tiny_gpt2, tmp_path):
    from tunekit.training.fingerprint import rows_digest

    tuner = _tuner(tiny_gpt2, tmp_path, "r", max_steps=1)
    first = tuner._prepare(Dataset.from_list(ROWS).to_iterable_dataset()).train
    again = tuner._prepare(Dataset.from_list(ROWS).to_iterable_dataset()).train
    other = tuner._prepare(Dataset.from_list(ROWS[1:]).to_iterable_dataset()).train
    assert rows_digest(first).startswith("stream:") and rows_digest(first) == rows_digest(again)
    assert rows_digest(first) != rows_digest(other)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_iso_dates_in_json_files_stay_the_strings_written(tmp_path, suffix):
    """pyarrow's JSON reader turns any ISO 8601 string into a timestamp; a date answer must stay text."""
    import json

    from tunekit.builtin.adapters import FilesAdapter, FilesOptions

    rows = [{"prompt": "17 May 2088 ->", "completion": "2088-05-17"}, {"prompt": "noon ->", "completion": "2001-01-01T12:00:00"}]
    path = tmp_path / f"rows{suffix}"
    path.write_text("\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows))
    assert FilesAdapter(FilesOptions()).load(path).train.to_list() == rows
