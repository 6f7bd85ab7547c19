"""Dataset adapters: python rows, Hugging Face datasets, pandas, and local files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from tunekit.errors import DataError
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import LoadedData, NoOptions, PartOptions

EVAL_SPLIT_NAMES = ("validation", "eval", "test", "valid", "dev")


def _from_arrow(build: Any, what: str) -> Any:
    try:
        return build()
    except DataError:
        raise
    except Exception as exc:  # pyarrow.ArrowInvalid / ArrowTypeError for mixed types
        raise DataError(
            f"{what} could not be read as a table: {exc}. Every row must have the same columns "
            "with values of the same type (strings for text fields)."
        ) from None


class RecordsAdapter:
    """A list of dicts (``[{"prompt": ..., "completion": ...}]``) or a dict of columns."""

    name: ClassVar[str] = "records"
    description: ClassVar[str] = "Python rows: a list of dicts, or a dict of equal-length lists."
    Options: ClassVar[type[NoOptions]] = NoOptions

    def __init__(self, options: NoOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        if isinstance(source, Mapping):
            return all(isinstance(v, Sequence) and not isinstance(v, str) for v in source.values())
        return isinstance(source, (list, tuple))

    def load(self, source: Any) -> LoadedData:
        from datasets import Dataset

        if isinstance(source, Mapping):
            lengths = {k: len(v) for k, v in source.items()}
            if len(set(lengths.values())) > 1:
                raise DataError(f"the columns of a dict of lists must have equal lengths, got {lengths}.")
            return LoadedData(_from_arrow(lambda: Dataset.from_dict(dict(source)), "the dict of columns"), None, "dict of columns")
        rows = list(source)
        if not rows:
            raise DataError("the dataset is empty: give at least one row.")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DataError(
                    f"row {i} is a {type(row).__name__}; every row must be a dict such as "
                    "{'prompt': ..., 'completion': ...} or {'text': ...}."
                )
        return LoadedData(_from_arrow(lambda: Dataset.from_list([dict(r) for r in rows]), "the rows"), None, f"{len(rows)} python rows")


class HFDatasetAdapter:
    """A ``datasets.Dataset``, or a ``DatasetDict`` whose splits are used as train and eval."""

    name: ClassVar[str] = "hf-dataset"
    description: ClassVar[str] = "A datasets.Dataset, or a DatasetDict ('train' + 'validation'/'test')."
    Options: ClassVar[type[NoOptions]] = NoOptions

    def __init__(self, options: NoOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        return type(source).__module__.startswith("datasets") and hasattr(source, "column_names")

    def load(self, source: Any) -> LoadedData:
        from datasets import DatasetDict, IterableDatasetDict

        if isinstance(source, (DatasetDict, IterableDatasetDict)):
            if "train" not in source:
                raise DataError(
                    f"the DatasetDict has splits {list(source)} but no 'train' split; pass the "
                    "split to train on directly, e.g. fit(ds['my_split'])."
                )
            eval_split = next((source[n] for n in EVAL_SPLIT_NAMES if n in source), None)
            return LoadedData(source["train"], eval_split, f"{type(source).__name__} splits {list(source)}")
        return LoadedData(source, None, f"datasets.{type(source).__name__}")


def _offline() -> bool:
    """Whether the hub is off: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, read now (datasets reads them at import)."""
    import datasets.config

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return bool(datasets.config.HF_HUB_OFFLINE) or any(f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """datasets and huggingface_hub in offline mode for one call (a cached dataset still loads; an
    uncached one fails at once instead of retrying a hub that cannot be reached)."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


class HubAdapter:
    """A mapping ``{path, split, name, data_files, revision, streaming}`` read with ``datasets.load_dataset``:
    a hub dataset (``org/name``), a builder with files (``path: json, data_files: ...``) or a folder of data files."""

    name: ClassVar[str] = "load-dataset"
    description: ClassVar[str] = "A mapping {path: org/name or a local folder, split, name, data_files, revision, streaming} for datasets.load_dataset."
    Options: ClassVar[type[NoOptions]] = NoOptions

    def __init__(self, options: NoOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        from tunekit.config import DatasetSource

        return isinstance(source, DatasetSource) or (isinstance(source, Mapping) and "path" in source)

    def load(self, source: Any) -> LoadedData:
        from datasets import load_dataset
        from pydantic import ValidationError

        from tunekit.config import DatasetSource

        try:
            spec = DatasetSource.model_validate(source)
        except ValidationError as exc:
            issues = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'source'}: {e['msg']}" for e in exc.errors())
            raise DataError(
                f"the dataset mapping is not valid ({issues}). It takes path, split, name, data_files, revision "
                "and streaming, e.g. {'path': 'org/name', 'split': 'train[:90%]'}."
            ) from None
        local = Path(spec.path).expanduser()
        hub = spec.data_files is None and not local.exists() and spec.path not in _BUILDERS
        offline = hub and _offline()
        kwargs: dict[str, Any] = {"split": spec.split, "streaming": spec.streaming}
        for key in ("name", "data_files", "revision"):
            if getattr(spec, key) is not None:
                kwargs[key] = getattr(spec, key)
        try:
            with _hub_offline(offline):
                ds = load_dataset(str(local) if local.exists() else spec.path, **kwargs)
        except Exception as exc:
            raise DataError(_load_failure(spec, hub, offline, exc)) from exc
        return LoadedData(ds, None, spec.describe())


_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder", "webdataset", "sql")


def _load_failure(spec: Any, hub: bool, offline: bool, exc: Exception) -> str:
    why = f"{type(exc).__name__}: {str(exc)[:300]}"
    if hub and (offline or isinstance(exc, (ConnectionError, OSError)) or "DatasetNotFound" in type(exc).__name__):
        where = "the hub is off (HF_HUB_OFFLINE)" if offline else "the hub could not be reached, or has no such dataset"
        return (
            f"could not load the dataset {spec.path!r} ({where}; {why}). Check the id (org/name) and the network, or "
            "use local data: a folder written by Dataset.save_to_disk given as a path, a data file, or "
            "{'path': 'json', 'data_files': 'rows.jsonl'} (or {'path': 'a/local/folder'}) for load_dataset. "
            "Set HF_HUB_OFFLINE=1 to fail at once instead of retrying an unreachable hub."
        )
    return f"could not load the dataset {spec.describe()!r} with datasets.load_dataset ({why}); check path, split, name and data_files."


class PandasAdapter:
    """A pandas ``DataFrame``, one row per example."""

    name: ClassVar[str] = "pandas"
    description: ClassVar[str] = "A pandas DataFrame, one row per example."
    Options: ClassVar[type[NoOptions]] = NoOptions

    def __init__(self, options: NoOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        return type(source).__name__ == "DataFrame" and type(source).__module__.startswith("pandas")

    def load(self, source: Any) -> LoadedData:
        from datasets import Dataset

        return LoadedData(
            _from_arrow(lambda: Dataset.from_pandas(source, preserve_index=False), "the DataFrame"),
            None,
            f"DataFrame with {len(source)} rows",
        )


class FilesOptions(PartOptions):
    text_sample_by: Literal["document", "paragraph", "line"] = Field(
        default="document",
        description="How a .txt file is cut into rows of raw text: the whole file, paragraphs, or lines.",
    )


_FILE_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class FilesAdapter:
    """Local ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` and ``.txt`` (raw text) files, via datasets' loaders."""

    name: ClassVar[str] = "files"
    description: ClassVar[str] = "Local .jsonl/.json/.csv/.parquet files, or .txt files of raw text."
    Options: ClassVar[type[FilesOptions]] = FilesOptions

    def __init__(self, options: FilesOptions):
        self.options = options

    def can_load(self, source: Any) -> bool:
        return isinstance(source, (str, Path))

    def load(self, source: Any) -> LoadedData:
        path = Path(source).expanduser()
        if path.is_dir():
            return _saved_dataset(path)
        loader = _FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise DataError(
                f"{str(path)!r} is not a data file tunekit can read; use one of "
                f"{', '.join(_FILE_LOADERS)} (or pass rows, a DataFrame or a datasets.Dataset)."
            )
        if not path.is_file():
            raise DataError(f"data file {str(path)!r} does not exist; check the path.")
        if path.stat().st_size == 0:
            raise DataError(f"data file {str(path)!r} is empty.")
        _check_utf8(path, loader)
        from datasets import load_dataset

        kwargs: dict[str, Any] = {}
        if loader == "text":
            kwargs["sample_by"] = self.options.text_sample_by
        try:
            # datasets reads data_files as glob patterns: escaped, "set[1].jsonl" names that file and no other.
            ds = load_dataset(loader, data_files=glob.escape(str(path.resolve())), split="train", **kwargs)
        except Exception as exc:  # the datasets error stays the cause; its message and its own cause's are shown
            inner = exc.__cause__
            why = f"{type(exc).__name__}: {exc}" + (f"; caused by {type(inner).__name__}: {inner}" if inner else "")
            raise DataError(
                f"could not read {str(path)!r} as {path.suffix} ({why}). "
                "Check that the file is valid and every row has the same columns."
            ) from exc
        if loader == "json" and _has_time_types(ds.features):
            ds = _json_as_written(path)
        return LoadedData(ds, None, str(path))


def _has_time_types(features: Any) -> bool:
    """Whether datasets' JSON reader turned some strings into dates or times (pyarrow infers a timestamp from
    any ISO 8601 string: the answer ``"2088-05-17"`` came back as ``datetime(2088, 5, 17)``)."""
    text = repr(features)
    return any(kind in text for kind in ("timestamp[", "date32", "date64", "time32", "time64"))


def _json_as_written(path: Path) -> Any:
    """A JSON Lines (or JSON) file read with Python's json module, every value as written."""
    import json

    from datasets import Dataset

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError:  # JSON Lines in a .json file, which datasets reads too
            data = None
        if isinstance(data, list):
            return Dataset.from_list(data)
        if isinstance(data, dict):
            return Dataset.from_dict(data)
    return Dataset.from_list([json.loads(line) for line in text.splitlines() if line.strip()])


def _saved_dataset(path: Path) -> LoadedData:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, via ``load_from_disk``
    (a DatasetDict's train and validation splits become train and eval, as in memory)."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            f"{str(path)!r} is a folder, not a data file, and not one written by datasets' save_to_disk (no state.json or "
            f"dataset_dict.json). For a folder of data files give {{'path': {str(path)!r}}} (read with "
            "datasets.load_dataset), or give one data file."
        )
    from datasets import load_from_disk

    try:
        saved = load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"could not read the saved dataset {str(path)!r} ({type(exc).__name__}: {str(exc)[:200]}).") from exc
    loaded = HFDatasetAdapter(NoOptions()).load(saved)
    return LoadedData(loaded.train, loaded.eval, f"{loaded.description} from {path}")


def _check_utf8(path: Path, loader: str) -> None:
    if loader == "parquet":
        return
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{str(path)!r} line {lineno} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); re-encode the file as UTF-8."
                ) from None


@hookimpl
def register_dataset_adapters(register: Register) -> None:
    register(HubAdapter)  # before records: a {path: ...} mapping is a dataset to load, not columns
    register(RecordsAdapter)
    register(HFDatasetAdapter)
    register(PandasAdapter)
    register(FilesAdapter)
