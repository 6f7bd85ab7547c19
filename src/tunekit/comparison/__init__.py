"""Compare fine-tuning candidates fairly: ``tunekit.compare(...)`` and the report it returns.

>>> from tunekit import compare                                            # doctest: +SKIP
>>> report = compare(model="gpt2", candidates=["head", "lora"], train=rows,
...                  budget={"max_steps": 50}, seeds=[0, 1])                 # doctest: +SKIP
>>> print(report.to_markdown()); report.plot("compare.png")                # doctest: +SKIP

Modules: ``api`` (the call), ``candidates`` (naming and merging), ``staging`` (one data file
for all), ``budget`` (steps/tokens/epochs), ``runner`` + ``worker`` (a process per run),
``report`` (table, Markdown, JSON), ``plot`` (the PNG), ``config_file`` (``tunekit compare``).
"""

from __future__ import annotations

from tunekit.comparison.api import compare
from tunekit.comparison.report import CandidateResult, CompareReport, RunRecord, load_report

__all__ = ["CandidateResult", "CompareReport", "RunRecord", "compare", "load_report"]
