"""Find and load a base model and its tokenizer: an alias, a hub id, a local directory, or a .gguf file.

A ``.gguf`` file is converted once into a transformers directory and read from that cache
afterwards (see :mod:`tunekit.models.gguf_cache`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunekit.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``path`` is what ``from_pretrained`` is given."""

    kind: Literal["local", "gguf", "hub"]
    path: str
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def resolve_alias(model: str) -> str | None:
    """What the model alias ``model`` stands for (e.g. ``smollm2-135m``), or None if it is not one.

    Aliases come from the ``register_model_aliases`` hook; something that looks like a path
    (``./smollm2-135m``) is never an alias.
    """
    from tunekit.plugins import get_registry

    if _looks_like_path(model) or model.lower().endswith(".gguf"):
        return None
    registry = get_registry("model_alias")
    if model not in registry:
        return None
    reg = registry.get(model)
    return str(reg.cls(reg.options_model()).resolve())


def resolve_source(model: str) -> ModelSource:
    """Classify ``model`` as an alias, a local directory, a .gguf file, or a hub id."""
    target = resolve_alias(model)
    if target is not None:
        log.debug("tunekit: model alias %r -> %s", model, target)
        model = target
    path = Path(model).expanduser()
    if model.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model file {model!r} does not exist; check the path to the .gguf file.")
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model directory {model!r} has no config.json, so it is not a transformers model "
                "directory. Point to the directory save_pretrained wrote (or to a .gguf file)."
            )
        return ModelSource("local", str(path))
    if path.exists():
        raise ModelLoadError(
            f"{model!r} is a file but not a .gguf model; give a model directory, a .gguf file or a hub id."
        )
    if _looks_like_path(model):
        raise ModelLoadError(f"model path {model!r} does not exist; check the path.")
    return ModelSource("hub", model)


def materialize(source: ModelSource) -> ModelSource:
    """The source to load from: a .gguf file's converted cache directory (converting it on first
    use), or ``source`` itself. With ``TUNEKIT_GGUF_CACHE=0``, or when the cache cannot be written,
    a .gguf file is de-quantized on every load instead."""
    if source.kind != "gguf" or os.environ.get("TUNEKIT_GGUF_CACHE", "1").lower() in {"0", "false", "no", "off"}:
        return source
    from tunekit.models.gguf_cache import convert_gguf

    try:
        return ModelSource("local", str(convert_gguf(Path(source.path) / str(source.gguf_file))))
    except OSError as exc:
        log.warning("tunekit: cannot cache the converted GGUF model (%s); loading it directly.", exc)
        return source


def _load_error(source: ModelSource, what: str, exc: Exception) -> ModelLoadError:
    if source.kind == "hub":
        from tunekit.errors import join_names
        from tunekit.plugins import get_registry

        aliases = get_registry("model_alias").names()
        return ModelLoadError(
            f"could not load the {what} {source.path!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the "
            "id, your network and HF_TOKEN for gated models; offline, pass a local model "
            f"directory, a .gguf file or a model alias ({join_names(aliases)}) instead."
        )
    return ModelLoadError(f"could not load the {what} from {source.path!r} ({type(exc).__name__}: {exc}).")


def load_tokenizer(
    source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """Load the tokenizer and make it usable for training: it always has a pad token.

    A missing pad token becomes the EOS token. That is safe here because padding is
    masked by position (attention mask), never by token id, so EOS is still trained.
    """
    from transformers import AutoTokenizer

    source = materialize(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.path, trust_remote_code=trust_remote_code, revision=revision, **source.from_pretrained_kwargs()
        )
    except Exception as exc:
        raise _load_error(source, "tokenizer", exc) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    extra_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device: Any = None,
) -> PreTrainedModel:
    """Load a causal LM from ``source`` with the given dtype and quantizer kwargs, onto ``device``.

    A quantized (bitsandbytes) model is placed at load time (``device_map={"": device}``: its
    weights cannot be moved afterwards); any other model is moved there once loaded.
    """
    from transformers import AutoModelForCausalLM

    source = materialize(source)
    kwargs = dict(extra_kwargs or {})
    if "quantization_config" not in kwargs:
        kwargs.setdefault("dtype", dtype)
    elif device is not None:
        kwargs.setdefault("device_map", {"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            trust_remote_code=trust_remote_code,
            revision=revision,
            **source.from_pretrained_kwargs(),
            **kwargs,
        )
    except Exception as exc:
        raise _load_error(source, "model", exc) from exc
    if source.kind == "gguf":
        # transformers marks GGUF-loaded models "quantized with gguf" and refuses to save them,
        # but the tensors are already de-quantized to plain torch weights.
        from tunekit.models.gguf_cache import strip_gguf_quantization

        strip_gguf_quantization(model)
    if device is not None and "device_map" not in kwargs:
        model = model.to(device)
    return model  # type: ignore[no-any-return]
