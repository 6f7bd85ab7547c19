"""Find and load a base model and its tokenizer: an alias, a hub id, a local directory, or a .gguf file.

A ``.gguf`` file is converted once into a transformers directory and read from that cache
afterwards (see :mod:`tunekit.models.gguf_cache`).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunekit.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunekit.config import TuneConfig

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
    if source.kind == "gguf":
        _check_gguf_magic(Path(source.path) / str(source.gguf_file))
    if source.kind != "gguf" or os.environ.get("TUNEKIT_GGUF_CACHE", "1").lower() in {"0", "false", "no", "off"}:
        return source
    from tunekit.models.gguf_cache import convert_gguf

    gguf = Path(source.path) / str(source.gguf_file)
    try:
        return ModelSource("local", str(convert_gguf(gguf)))
    except OSError as exc:
        log.warning("tunekit: cannot cache the converted GGUF model (%s); loading it directly.", exc)
        return source
    except Exception as exc:  # the gguf reader's ValueError / struct.error / KeyError on a damaged file
        raise _garbage_gguf(gguf, exc) from exc


GGUF_MAGIC = b"GGUF"


def _garbage_gguf(gguf: Path, exc: BaseException | None) -> ModelLoadError:
    why = f" ({type(exc).__name__}: {str(exc)[:200]})" if exc is not None else ""
    return ModelLoadError(
        f"{str(gguf)!r} could not be read as a GGUF model{why}. Check that it is a complete .gguf model "
        "file (download it again if it may have been cut short), or give a model directory or hub id."
    )


def _check_gguf_magic(gguf: Path) -> None:
    """A ``ModelLoadError`` naming the file when it does not even start like a GGUF file."""
    try:
        with gguf.open("rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise _garbage_gguf(gguf, exc) from exc
    if head != GGUF_MAGIC:
        what = "is empty" if not head else f"does not start with the GGUF magic bytes (starts with {head!r})"
        raise ModelLoadError(
            f"{str(gguf)!r} {what}, so it is not a GGUF model file. Check the path, download it again "
            "if it may have been cut short, or give a model directory or hub id."
        )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


_CORRUPT_HINTS = (
    "no file named", "does not appear to have a file named", "not a valid json file", "couldn't instantiate the backend tokenizer",
    "unable to load weights", "error while deserializing", "invalid header", "incomplete metadata", "file is too small",
)
_ARCHITECTURE_HINTS = ("does not recognize this architecture", "unrecognized configuration class", "unrecognized model")


def _load_error(source: ModelSource, what: str, exc: Exception) -> ModelLoadError:
    """A :class:`ModelLoadError` that says which of these went wrong, and what to do: the hub id is
    unknown, or not cached while offline; the model is gated or the token may not read it; the
    files are missing or corrupt; the architecture is one this transformers does not know. The
    caller chains ``exc`` as the cause."""
    import transformers
    from huggingface_hub import errors as hub

    chain = _causes(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    where = f"the {what} {source.path!r}" if source.kind == "hub" else f"the {what} at {source.path!r}"
    detail = _first_line(chain[0]) + (f"; {_first_line(chain[-1])}" if len(chain) > 1 else "")
    status = next((getattr(getattr(e, "response", None), "status_code", None) for e in chain if isinstance(e, hub.HfHubHTTPError)), None)

    if any(isinstance(e, hub.GatedRepoError) for e in chain) or status == 403:
        page = f"https://huggingface.co/{source.path}"
        return ModelLoadError(
            f"{where} is gated, or your token may not read it ({detail}). Accept its terms at {page} "
            "with your account, then set HF_TOKEN to a token of that account (or run `hf auth login`)."
        )
    if any(isinstance(e, hub.RevisionNotFoundError) for e in chain):
        return ModelLoadError(
            f"{where} has no revision {detail}. Check the branch, tag or commit given as revision."
        )
    if any(isinstance(e, hub.RepositoryNotFoundError) for e in chain):
        close = similar_aliases(source.path) if source.kind == "hub" else []
        return ModelLoadError(
            (f"did you mean the model alias {close[0]!r}? " if close else "")
            + f"{where} is not on the Hugging Face hub, or it is private and no token with access is set ({detail}). "
            "Check the id (owner/name); for a private model set HF_TOKEN. A local directory must exist "
            "at that path (or start the path with ./)."
        )
    if status == 401:
        return ModelLoadError(
            f"the Hugging Face hub refused the token for {where} ({detail}). Set HF_TOKEN to a valid "
            "token (or run `hf auth login`), or unset it for a public model."
        )
    if any(isinstance(e, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)) for e in chain) or (
        source.kind == "hub" and ({"ConnectError", "ConnectTimeout", "NetworkError", "ReadTimeout"} & names)
    ):
        from tunekit.errors import join_names
        from tunekit.plugins import get_registry

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        aliases = get_registry("model_alias").names()
        return ModelLoadError(
            f"{where} is not in the local Hugging Face cache and the hub "
            f"{'is switched off (HF_HUB_OFFLINE=1)' if offline else 'cannot be reached'} ({detail}). "
            "Download it once with network access (and HF_HUB_OFFLINE unset), or pass a local model "
            f"directory, a .gguf file or a model alias ({join_names(aliases)}) instead."
        )
    if any(hint in text for hint in _ARCHITECTURE_HINTS):
        import re

        found = re.search(r"model type `([^`]+)`", text)
        kind = f"model type {found.group(1)!r}" if found else "architecture"
        return ModelLoadError(
            f"{where} has a {kind} that transformers {transformers.__version__} cannot load as a causal LM "
            f"({detail}). Upgrade transformers (pip install -U transformers) if the model is newer than it; "
            "pass trust_remote_code=True only if the model ships its own code and you trust it; an "
            "encoder-only or sequence-to-sequence model cannot be tuned as a causal LM."
        )
    if {"JSONDecodeError", "SafetensorError", "EntryNotFoundError", "RemoteEntryNotFoundError", "UnpicklingError"} & names or any(
        hint in text for hint in _CORRUPT_HINTS
    ):
        fix = (
            "Delete its entry in the Hugging Face cache (`hf cache delete`) and download it again."
            if source.kind == "hub"
            else "Save it again with save_pretrained (for the model and its tokenizer), or copy the missing files in."
        )
        return ModelLoadError(f"the {what} files at {source.path!r} are missing or corrupt ({detail}). {fix}")
    if source.kind == "hub":
        return ModelLoadError(
            f"could not load {where} from the Hugging Face hub ({detail}). Check the id, your network and "
            "HF_TOKEN; offline, pass a local model directory, a .gguf file or a model alias instead."
        )
    return ModelLoadError(f"could not load {where} ({detail}).")


HUB_PROBE_TIMEOUT_S = 3.0
"""How long the hub may take to accept a connection before an uncached hub model fails as unreachable."""
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def similar_aliases(name: str) -> list[str]:
    """Registered model aliases spelt like ``name`` (a typo of ``smollm2-135m``, say), closest first."""
    import difflib

    from tunekit.plugins import get_registry

    return difflib.get_close_matches(name.lower(), get_registry("model_alias").names(), n=3, cutoff=0.6)


@functools.lru_cache(maxsize=8)
def _reachable(endpoint: str) -> str | None:
    """None when a TCP connection to the hub's endpoint opens within HUB_PROBE_TIMEOUT_S, else why not."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_hub_reachable(source: ModelSource, *, revision: str | None = None) -> None:
    """Fail at once when a hub model is neither in the local cache nor reachable.

    huggingface_hub retries an unreachable hub five times (over a minute) before giving up; a
    typo of an alias, or a hub id on a machine without network, should say so in seconds. The
    probe is one TCP connection to the hub's endpoint; behind a proxy (``HTTPS_PROXY``...) it is
    skipped and the hub libraries decide, since a direct connection says nothing there.
    """
    if source.kind != "hub":
        return
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(source.path, "config.json", revision=revision), str):
            return  # cached: transformers reads it without the network
    except Exception:  # an id the cache cannot even name (huggingface_hub validates it): the load says why
        return
    offline = constants.is_offline_mode()
    why = None if offline or any(os.environ.get(v) for v in _PROXY_VARIABLES) else _reachable(constants.ENDPOINT)
    if not offline and why is None:
        return
    close = similar_aliases(source.path)
    hint = f"Did you mean the model alias {close[0]!r}? " if close else ""
    from tunekit.errors import join_names
    from tunekit.plugins import get_registry

    reason = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else f"{constants.ENDPOINT} cannot be reached ({why})"
    raise ModelLoadError(
        f"model {source.path!r} is not a model alias, a local path or a model in the local Hugging Face cache, and "
        f"{reason}. {hint}Give a model alias ({join_names(get_registry('model_alias').names())}), a local model "
        "directory or a .gguf file, or download the hub model once with network access."
    )


def load_tokenizer(
    source: ModelSource, *, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """Load the tokenizer and make it usable for training: it always has a pad token.

    A missing pad token becomes the EOS token. That is safe here because padding is
    masked by position (attention mask), never by token id, so EOS is still trained.
    """
    from transformers import AutoTokenizer

    check_hub_reachable(source, revision=revision)
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


def load_configured_tokenizer(
    config: TuneConfig, source: ModelSource | None = None, *, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer a run uses: from ``source`` (default: the config's model), with the config's chat template.

    ``Tuner`` and ``compare``'s token budget both load it here, so both tokenize alike.
    """
    base = source if source is not None else resolve_source(config.model)
    if revision is None and source is None and base.kind == "hub":
        revision = config.revision
    tokenizer = load_tokenizer(base, trust_remote_code=config.trust_remote_code, revision=revision)
    from tunekit.config import is_template_text

    if is_template_text(config.data.chat_template):
        tokenizer.chat_template = config.data.chat_template
    add_new_tokens(tokenizer, config.data.add_tokens)
    return tokenizer


def add_new_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> list[int]:
    """Add ``tokens`` as special tokens (never split, never normalised) and return their ids.

    A token the tokenizer already has (a reload of a save that added it) keeps its id.
    """
    if not tokens:
        return []
    known = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(tokens) if t not in known]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    vocab = tokenizer.get_vocab()
    return [int(vocab[t]) for t in dict.fromkeys(tokens)]


TASK_MODEL_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}
"""The transformers auto class each objective ``task`` loads the base as (see :class:`tunekit.parts.Objective`)."""


def model_class(task: str) -> Any:
    """The transformers auto class for an objective's ``task``, or a ``ConfigError`` naming the known ones."""
    import transformers

    from tunekit.errors import ConfigError, Problem

    if task not in TASK_MODEL_CLASSES:
        raise ConfigError([Problem("objective", (
            f"the objective's task {task!r} names no model class tunekit loads; known: {', '.join(TASK_MODEL_CLASSES)}"))])
    return getattr(transformers, TASK_MODEL_CLASSES[task])


def load_model(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    extra_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device: Any = None,
    task: str = "causal-lm",
) -> PreTrainedModel:
    """Load a causal LM (or, for another objective ``task``, e.g. ``"sequence-classification"``, the
    model class of :data:`TASK_MODEL_CLASSES`) from ``source`` with the given dtype and quantizer
    kwargs, onto ``device``.

    A quantized (bitsandbytes) model is placed at load time (``device_map={"": device}``: its
    weights cannot be moved afterwards); any other model is moved there once loaded.
    """
    auto_class = model_class(task)

    check_hub_reachable(source, revision=revision)
    source = materialize(source)
    kwargs = dict(extra_kwargs or {})
    if "quantization_config" not in kwargs:
        kwargs.setdefault("dtype", dtype)
    elif device is not None:
        kwargs.setdefault("device_map", {"": device})
    try:
        model = auto_class.from_pretrained(
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
