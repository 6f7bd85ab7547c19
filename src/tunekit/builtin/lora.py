"""``lora``: low-rank adapters through peft (with DoRA and rsLoRA switches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from tunekit.errors import ConfigError, Problem
from tunekit.formats import PEFT_ADAPTER, PeftAdapterFormat, SavedInFormat
from tunekit.hookspecs import Register, hookimpl
from tunekit.parts import PartOptions

if TYPE_CHECKING:

    import torch


class LoraOptions(PartOptions):
    rank: int = Field(default=8, ge=1, description="Rank r of the low-rank update.")
    alpha: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Scaling numerator lora_alpha; None uses 2 x rank."
    )
    dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description=(
            "Dropout on the adapter input. 0 (the default) skips the dropped copy of every adapted layer's input "
            "that dropout keeps for the backward pass: about a quarter less peak memory and 1.1-1.2x faster in "
            "docs/performance.md. Try 0.05-0.1 to regularise a small data set."
        ),
    )
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Layers to adapt: a group ('all-linear', 'attention', 'mlp') or a list of "
        "layer or container names ('q_proj', 'c_attn', 'mlp'), resolved on the model itself.",
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none", description="Which biases train along with the adapters."
    )
    modules_to_save: list[str] | None = Field(
        default=None, description="Modules trained in full and saved with the adapter."
    )

    @model_validator(mode="after")
    def _non_empty_targets(self) -> LoraOptions:
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer or group")
        return self


def new_token_layers(model: torch.nn.Module, token_ids: list[int]) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices`` for new tokens: the input embedding's rows, and the output head's
    when it is not tied to the embedding (its new rows are as untrained as the embedding's; peft ties a
    tied head to the embedding's token adapter itself)."""
    if not token_ids:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    layers = {names[id(model.get_input_embeddings())].rsplit(".", 1)[-1]: list(token_ids)}  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    tied = head is not None and head.weight is model.get_input_embeddings().weight  # type: ignore[operator]
    if head is not None and not tied:
        layers[names[id(head)].rsplit(".", 1)[-1]] = list(token_ids)
    return layers


def check_rank_fits(model: torch.nn.Module, targets: list[str], rank: int) -> None:
    """A ``ConfigError`` when ``rank`` exceeds the smaller dimension of every adapted layer (the
    update would not be low-rank anywhere, only slower, and a huge rank fails deep inside torch);
    a warning when it exceeds only some (a mixture-of-experts router is a few outputs wide)."""
    import logging

    from tunekit.errors import ConfigError, Problem

    modules = dict(model.named_modules())
    widths: dict[str, int] = {}
    for name in targets:
        module = modules.get(name)
        # a bitsandbytes 4-bit weight is stored packed as (n/2, 1): the layer's own features are its shape
        features = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        shape: Any = features if None not in features else getattr(getattr(module, "weight", None), "shape", None)
        if shape is not None and len(shape) == 2:
            widths[name] = int(min(int(shape[0]), int(shape[1])))
    if not widths:
        return
    widest = max(widths, key=lambda n: widths[n])
    if rank > widths[widest]:
        raise ConfigError([Problem("strategy.rank", (
            f"rank {rank} is larger than every adapted layer: the widest, {widest!r}, has a smaller "
            f"dimension of {widths[widest]}; use a rank of at most {widths[widest]} (typically 4-64)"
        ))])
    narrow = sorted(n for n, w in widths.items() if w < rank)
    if narrow:
        logging.getLogger(__name__).warning(
            "tunekit: LoRA rank %d is larger than %d adapted layer(s), e.g. %r (smaller dimension %d); "
            "their update is full-rank, not low-rank.", rank, len(narrow), narrow[0], widths[narrow[0]],
        )


class LoraStrategy(SavedInFormat):
    """LoRA adapters on the chosen layers; the base weights stay frozen and unchanged.

    On a sequence classifier (``objective='classify'``) the task type is peft's ``SEQ_CLS``, and the new
    head (``score``) is trained in full and saved with the adapter (``modules_to_save``).
    """

    name: ClassVar[str] = "lora"
    description: ClassVar[str] = "LoRA adapters through peft (rank, alpha, DoRA, rsLoRA, layer groups)."
    Options: ClassVar[type[LoraOptions]] = LoraOptions
    default_learning_rate: ClassVar[float] = 2e-4
    uses_adapters: ClassVar[bool] = True
    trains_tied_weights: ClassVar[bool] = False
    format: ClassVar[PeftAdapterFormat] = PEFT_ADAPTER
    """Saved as a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""

    def __init__(self, options: LoraOptions):
        self.options = options
        self.new_token_ids: list[int] = []

    def train_new_tokens(self, token_ids: list[int]) -> None:
        """Train just these rows of the input embedding (``data.add_tokens``; peft's ``trainable_token_indices``,
        which also covers an output head tied to the embedding), saved in the adapter."""
        self.new_token_ids = list(token_ids)

    def check_quantizer(self, quantizer: Any) -> str | None:
        return None  # LoRA on a k-bit base is QLoRA

    def peft_config(self, model: torch.nn.Module) -> Any:
        from peft import LoraConfig

        from tunekit.models.inspect import classification_head
        from tunekit.models.targets import resolve_targets

        o = self.options
        task_head = classification_head(model)
        targets = resolve_targets(model, o.target_modules)
        check_rank_fits(model, targets.modules, o.rank)
        modules = dict(model.named_modules())
        conv1d = any(type(modules[t]).__name__ == "Conv1D" for t in targets.modules)
        if targets.parameters:
            self._check_expert_options(model, targets.parameters, conv1d)
        modules_to_save = list(o.modules_to_save or [])
        if task_head is not None and task_head[0] not in modules_to_save:
            modules_to_save.append(task_head[0])  # the new head is trained in full, and saved
        return LoraConfig(
            task_type="SEQ_CLS" if task_head is not None else "CAUSAL_LM",
            r=o.rank,
            lora_alpha=o.alpha if o.alpha is not None else 2 * o.rank,  # type: ignore[arg-type]
            lora_dropout=o.dropout,
            target_modules=targets.modules,
            # transformers 5 keeps mixture-of-experts weights as fused parameters, not Linear layers
            target_parameters=targets.parameters or None,
            use_dora=o.use_dora,
            use_rslora=o.use_rslora,
            bias=o.bias,
            modules_to_save=modules_to_save or None,
            trainable_token_indices=new_token_layers(model, self.new_token_ids) or None,
            fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights transposed
        )

    def _check_expert_options(self, model: torch.nn.Module, parameters: list[str], conv1d: bool) -> None:
        """peft adapts fused expert weights (``target_parameters``) without dropout or DoRA: refuse
        those here, with the way out, rather than train the attention alone or crash inside peft."""
        o = self.options
        unsupported = [
            (o.dropout > 0, "strategy.dropout", f"dropout={o.dropout}", "set dropout=0"),
            (o.use_dora, "strategy.use_dora", "use_dora=True", "set use_dora=false"),
            (conv1d, "strategy.target_modules", "Conv1D layers", "target the Linear layers only"),
        ]
        example = parameters[0].rsplit(".", 3)[-3:]
        problems = [
            Problem(
                location,
                f"{type(model).__name__} keeps its experts as fused weights ({'.'.join(example)}, "
                f"{len(parameters)} in all), which peft adapts only without {what}. Either {fix}, or "
                "leave the experts out with target_modules='attention' (or a list of layer names).",
            )
            for bad, location, what, fix in unsupported
            if bad
        ]
        if problems:
            raise ConfigError(problems)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model))  # type: ignore[arg-type]


@hookimpl
def register_strategies(register: Register) -> None:
    register(LoraStrategy)
