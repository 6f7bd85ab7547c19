"""Which way is better for each column of a comparison: the report's own measurements, and metrics.

Shared by the report (``best``) and the plot (its "higher is better" titles), so neither
imports the other for it.
"""

from __future__ import annotations

# The direction of the report's own measurements; a metric's comes from its registered part.
LOWER_IS_BETTER = {
    "train_loss", "peak_memory_mib", "wall_time_s", "saved_mib",
    "trainable_params", "trainable_percent", "total_params",
}
HIGHER_IS_BETTER = {"tokens_per_second", "tokens_seen", "steps"}
# Columns that hold a registered metric under another name.
METRIC_OF_COLUMN = {"eval_loss": "loss", "perplexity": "perplexity"}


def is_higher_better(column: str) -> bool | None:
    """Whether a larger value of ``column`` is better: costs and sizes are better smaller; a metric
    says so itself (``Metric.higher_is_better`` of its registered part). ``None`` when nobody
    knows (a metric whose plugin is not installed here)."""
    if column in HIGHER_IS_BETTER:
        return True
    if column in LOWER_IS_BETTER:
        return False
    from tunekit.plugins import get_registry

    metrics = get_registry("metric")
    name = METRIC_OF_COLUMN.get(column, column)
    if name in metrics:
        return bool(metrics.get(name).cls.higher_is_better)
    return None
