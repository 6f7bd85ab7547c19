"""Quiet libraries: ``training.progress_bar: false`` silences what the libraries print, not just tunekit's bar.

transformers (weight loading, ``generate``), datasets (``map``), and huggingface_hub (downloads) each draw
progress bars of their own, and transformers, peft and torch warn about deprecations on every run. With
``progress_bar: false`` a script's or a log's output is tunekit's own lines and its warnings only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets", "huggingface_hub", "torch", "bitsandbytes")
"""Whose warnings and bars are silenced."""

_FROM_A_LIBRARY = r"(" + "|".join(LIBRARIES) + r")(\..*)?$"


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """While inside: no progress bars from transformers, datasets or huggingface_hub, no deprecation or
    future warnings at all, no other warnings raised from the libraries' own modules, and transformers'
    and the libraries' loggers at ERROR. Everything is restored on leaving; tunekit's own log still speaks.

    >>> with quiet_libraries():                                  # doctest: +SKIP
    ...     tuner.fit(rows)
    """
    if not enabled:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as hf_logging

    datasets_bars = datasets.is_progress_bar_enabled()
    hub_bars_off = hub_utils.are_progress_bars_disabled()
    transformers_bars = hf_logging.is_progress_bar_enabled()
    transformers_level = hf_logging.get_verbosity()
    levels = {name: logging.getLogger(name).level for name in LIBRARIES if name != "transformers"}
    datasets.disable_progress_bars()
    hub_utils.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", module=_FROM_A_LIBRARY)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(transformers_level)
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if not hub_bars_off:
            hub_utils.enable_progress_bars()
        if datasets_bars:
            datasets.enable_progress_bars()
