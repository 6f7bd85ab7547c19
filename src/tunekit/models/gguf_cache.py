"""Convert a GGUF model once into a normal transformers directory, and reuse it.

transformers de-quantizes a GGUF file on every load (about 35 s for a 135M model on two
CPU cores), and marks the result "quantized with gguf", which it refuses to save. The
first load here writes the de-quantized weights (safetensors), the config and the
tokenizer (with the GGUF's chat template) to a cache directory; later loads read that
directory, which is more than ten times faster, and a model tuned from it saves like any
other transformers model.

The cache lives in ``$TUNEKIT_CACHE/gguf`` (default ``$XDG_CACHE_HOME/tunekit`` or
``~/.cache/tunekit``), one directory per GGUF file, keyed by the file's path, size and
modification time, so a changed file is converted again. A directory is written under a
temporary name and renamed into place when complete, so an interrupted conversion never
leaves a half-written cache; delete the directory to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "tunekit-gguf.json"
FORMAT = 1
"""Bumped when the cache layout changes, so old entries are not reused."""


def cache_root() -> Path:
    """The root of tunekit's caches: ``$TUNEKIT_CACHE``, else ``$XDG_CACHE_HOME/tunekit``, else ``~/.cache/tunekit``."""
    env = os.environ.get("TUNEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tunekit"


def cache_dir_for(gguf: Path) -> Path:
    """Where the conversion of ``gguf`` is (or will be) cached."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{FORMAT}|{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def cached_conversion(gguf: Path) -> Path | None:
    """The complete cache directory of ``gguf``, or None when it has not been converted yet."""
    target = cache_dir_for(gguf)
    return target if (target / MARKER).is_file() else None


def convert_gguf(gguf: str | os.PathLike[str]) -> Path:
    """The cache directory holding ``gguf`` as a transformers model + tokenizer, converting it if needed."""
    gguf = Path(gguf).resolve()
    done = cached_conversion(gguf)
    if done is not None:
        return done
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir_for(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("tunekit: converting %s to safetensors once; cached in %s", gguf.name, target)
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # De-quantized GGUF tensors are exact in float32; a lower dtype would round them.
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        strip_gguf_quantization(model)
        tmp.mkdir()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        meta = {
            "format": FORMAT,
            "source": str(gguf),
            "size": gguf.stat().st_size,
            "mtime_ns": gguf.stat().st_mtime_ns,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(target)
        except OSError:
            if cached_conversion(gguf) is None:  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def strip_gguf_quantization(model: object) -> None:
    """Clear the "quantized with gguf" marks of a GGUF-loaded model (its weights are plain tensors)."""
    model.hf_quantizer = None  # type: ignore[attr-defined]
    config = getattr(model, "config", None)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # type: ignore[union-attr]
    model.is_quantized = False  # type: ignore[attr-defined]
