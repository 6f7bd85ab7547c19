"""Dataset adapters: python rows, Hugging Face datasets, pandas, and local files."""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
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
        from datasets import DatasetDict

        if isinstance(source, DatasetDict):
            if "train" not in source:
                raise DataError(
                    f"the DatasetDict has splits {list(source)} but no 'train' split; pass the "
                    "split to train on directly, e.g. fit(ds['my_split'])."
                )
            eval_split = next((source[n] for n in EVAL_SPLIT_NAMES if n in source), None)
            return LoadedData(source["train"], eval_split, f"DatasetDict splits {list(source)}")
        return LoadedData(source, None, "datasets.Dataset")


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
        return LoadedData(ds, None, str(path))


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
    register(RecordsAdapter)
    register(HFDatasetAdapter)
    register(PandasAdapter)
    register(FilesAdapter)
