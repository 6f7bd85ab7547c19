"""The plugin contract: every hook tunekit calls, and the markers to implement them.

Writing a plugin takes three steps.

1. Write a part. A part is a class with a ``name``, a one-line ``description`` and an
   ``Options`` pydantic model (its own settings, validated under its name, so an error
   reads ``strategy.rank: must be >= 1``). What else it needs depends on its kind; see the
   protocols in :mod:`tunekit.parts`.
2. Register it from a hook implementation::

       from tunekit import hookimpl

       @hookimpl
       def register_strategies(register):
           register(BitFitStrategy)

3. Declare the module in your package's ``pyproject.toml`` so tunekit finds it::

       [project.entry-points.tunekit]
       bitfit = "tunekit_bitfit.plugin"

Built-in parts are registered through these same hooks (see :mod:`tunekit.builtin`),
so a plugin's part is a first-class citizen: it is validated, listed by
``tunekit plugins`` and chosen by name exactly like ``"lora"``.

Hooks are called through pluggy, so ``@hookimpl(tryfirst=True)``, ``trylast=True``,
``wrapper=True`` and ``hookwrapper=True`` behave as pluggy documents them. Every
implementation is called (none of the hooks is ``firstresult``) and return values are ignored.

The part hooks (``register_strategies`` ... ``register_rewards``, ``register_model_aliases``) are called when the
plugin manager is built, and again when a plugin is added in-process with
:func:`tunekit.plugins.register_plugin`: an implementation should only call ``register``.
Parts are registered in the order pluggy calls the implementations (a plugin loaded later,
or marked ``tryfirst``, comes first); every part is credited to the plugin whose
implementation called ``register``.

``register_trainer_callbacks`` is called at the start of every :meth:`tunekit.Tuner.fit`:
each ``transformers.TrainerCallback`` it registers joins that fit's Trainer. The ``on_*``
hooks are tunekit's own lifecycle callbacks during ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    # results.py is a bottom-layer value module (it imports nothing from tunekit); the facade is
    # not imported here at all, not even for typing: see TunerView.
    from tunekit.results import FitResult

PROJECT_NAME = "tunekit"

API_VERSION = 1
"""The plugin API version. A plugin module declares the version it was written for as
``TUNEKIT_API_VERSION = 1``; a plugin declaring another version (or none) is refused with a
message naming it. The number changes only when a hook's signature or a part protocol
changes incompatibly."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type[Any]], None]
RegisterCallback = Callable[[Any], None]
"""``register(callback)``: a ``transformers.TrainerCallback`` instance, or a subclass (the Trainer
makes one instance)."""


class TunerView(Protocol):
    """What the ``on_*`` hooks may use of the :class:`tunekit.Tuner` they are given.

    Hookspecs sit below the facade, so they name the attributes plugins use instead of
    importing it.
    """

    @property
    def config(self) -> Any:
        """The run's :class:`tunekit.TuneConfig`."""

    @property
    def strategy(self) -> Any:
        """The strategy part instance (``tuner.strategy.name``)."""

    @property
    def model(self) -> Any:
        """The prepared ``torch.nn.Module`` being trained."""

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the rows were tokenized with."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register strategy classes: which parameters train, and how.

    Call ``register(cls)`` once per class. See :class:`tunekit.parts.Strategy`.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizer classes: how the frozen base model is loaded.

    Call ``register(cls)`` once per class. See :class:`tunekit.parts.Quantizer`.
    """


@hookspec
def register_dataset_adapters(register: Register) -> None:
    """Register dataset adapter classes: how a user's data source becomes rows.

    Call ``register(cls)`` once per class. See :class:`tunekit.parts.DatasetAdapter`.
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register objective classes: how rows become token ids and labels.

    Call ``register(cls)`` once per class. See :class:`tunekit.parts.Objective`.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metric classes: how a model is scored by ``Tuner.evaluate(data, metrics=[...])``.

    Call ``register(cls)`` once per class. See :class:`tunekit.parts.Metric`.
    """


@hookspec
def register_rewards(register: Register) -> None:
    """Register reward classes: how GRPO scores the completions a model generated.

    Call ``register(cls)`` once per class; ``score(completions, prompts=..., references=...)``
    returns one float per completion, higher is better. See :class:`tunekit.parts.Reward`.
    """


@hookspec
def register_model_aliases(register: Register) -> None:
    """Register model aliases: short names such as ``"smollm2-135m"`` for a model source.

    Call ``register(cls)`` once per class; ``cls().resolve()`` returns the hub id, local
    directory or ``.gguf`` file the alias stands for. See :class:`tunekit.parts.ModelAlias`.
    """


@hookspec
def register_trainer_callbacks(register: RegisterCallback) -> None:
    """Register ``transformers.TrainerCallback`` objects that join the Trainer of every ``fit``.

    Called once at the start of each fit; call ``register(callback)`` once per callback (an
    instance, or a ``TrainerCallback`` subclass). A callback gets everything the Trainer gives
    its callbacks (``args``, ``state``, ``control``, ``model``, ...) and may steer the run
    through ``control`` (``control.should_training_stop = True``).
    """


@hookspec
def on_fit_start(tuner: TunerView) -> None:
    """Called once before the first training step, after the model is prepared."""


@hookspec
def on_log(tuner: TunerView, step: int, logs: dict[str, float]) -> None:
    """Called at each logging step with the logged values (``loss``, ``learning_rate``, ...)."""


@hookspec
def on_evaluate(tuner: TunerView, step: int, metrics: dict[str, float]) -> None:
    """Called after each evaluation during ``fit`` with its metrics (``eval_loss``, ...)."""


@hookspec
def on_fit_end(tuner: TunerView, result: FitResult) -> None:
    """Called once after training finished, with the typed result of ``fit``."""
