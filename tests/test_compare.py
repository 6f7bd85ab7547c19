"""tunekit.compare: fair side-by-side runs, each candidate in its own process, and the report.

Every candidate run starts a Python process (which imports torch), so the runs are shared:
one comparison of three strategies through the API, one comparison with failing candidates
and two seeds through the CLI; everything else is checked without starting a run.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from tunekit import ConfigError, DataError, TunekitError, Tuner, compare
from tunekit.cli import main
from tunekit.comparison import CompareReport, load_report
from tunekit.comparison.budget import parse_budget, steps_for_tokens, tokens_per_row
from tunekit.comparison.candidates import merge_config, parse_candidates
from tunekit.comparison.report import CandidateResult, RunRecord
from tunekit.comparison.worker import evaluate_metrics
from tunekit.results import LogPoint
from tunekit.testing import build_tiny_model, sft_rows

STEPS = 3
TRAINING = {"batch_size": 8}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("compare-model") / "gpt2", arch="gpt2")


@pytest.fixture(scope="module")
def three(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareReport, list[str]]:
    """full / head / lora, one seed, Python rows in, through the API."""
    lines: list[str] = []
    report = compare(
        str(model_path), ["full", "head", "lora"], sft_rows(32), sft_rows(8, seed=1),
        budget={"max_steps": STEPS}, seeds=[0], training=TRAINING, keep_models=False,
        output_dir=tmp_path_factory.mktemp("three") / "report", progress=lines.append,
    )
    return report, lines


@pytest.fixture(scope="module")
def via_cli(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, CompareReport, Path]:
    """lora plus two failing candidates, two seeds, an unsupported metric, through `tunekit compare`."""
    root = tmp_path_factory.mktemp("cli")
    for name, rows in (("train.jsonl", sft_rows(32)), ("eval.jsonl", sft_rows(8, seed=1))):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "model": str(model_path),
        "candidates": [
            "lora",
            {"name": "bad-rank", "strategy": {"name": "lora", "rank": 0}},
            {"name": "no-model", "model": str(root / "missing-model")},
        ],
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "budget": {"max_steps": STEPS},
        "metrics": ["loss", "exact_match"],
        "seeds": [0, 1],
        "training": TRAINING,
    }
    config = root / "compare.yaml"
    config.write_text(yaml.safe_dump(spec))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["compare", str(config), "--output-dir", str(root / "report")])
    return rc, out.getvalue(), load_report(root / "report"), root / "report"


# -- one comparison, three strategies --------------------------------------------------------------
def test_three_candidates_give_three_rows(three):
    report, _ = three
    table = report.table
    assert [row["candidate"] for row in table] == ["full", "head", "lora"]
    for row in table:
        assert row["status"] == "ok" and row["error"] is None
        assert row["steps"] == STEPS and row["tokens_seen"] > 0
        assert row["peak_memory_mib"] > 0 and row["wall_time_s"] > 0 and row["tokens_per_second"] > 0
        assert row["train_loss"] > 0 and row["eval_loss"] > 0
        assert row["perplexity"] == pytest.approx(2.718281828 ** row["eval_loss"], rel=1e-6)
        assert row["saved_mib"] > 0  # measured before keep_models=False removed it
        assert row["config"]["strategy"]["name"] == row["strategy"]
        assert row["config"]["training"]["max_steps"] == STEPS
    by_name = {row["candidate"]: row for row in table}
    assert by_name["lora"]["saved_mib"] < by_name["full"]["saved_mib"]  # an adapter, not the model
    assert by_name["full"]["trainable_percent"] == pytest.approx(100.0)
    assert report.train_rows == 32 and report.eval_rows == 8
    for cand in report.candidates:
        fit_dir = Path(cand.runs[0].output_dir)
        assert (fit_dir / "result.json").is_file() and not (fit_dir / "model").exists()


def test_every_candidate_read_the_same_staged_rows(three):
    report, _ = three
    lines = Path(report.train_data).read_text().splitlines()
    assert [json.loads(line) for line in lines] == sft_rows(32)
    for cand in report.candidates:
        job = json.loads((Path(cand.runs[0].log_path).parent / "job.json").read_text())
        assert (job["train"], job["eval"]) == (report.train_data, report.eval_data)


def test_param_counts_and_losses_match_a_plain_fit(three, model_path, tmp_path):
    """Each row reports what a Tuner fit with that strategy reports, and the same seed gives the same losses."""
    report, _ = three
    for cand in report.candidates:
        tuner = Tuner(
            model=str(model_path), strategy=cand.name, output_dir=str(tmp_path / cand.name),
            training={**TRAINING, "max_steps": STEPS, "seed": 0, "logging_steps": 1, "progress_bar": False},
        )
        fit = tuner.fit(sft_rows(32), sft_rows(8, seed=1))
        run = cand.runs[0]
        assert (run.trainable_params, run.total_params) == (fit.trainable_params, fit.total_params)
        assert [p.loss for p in run.loss_history] == pytest.approx([p.loss for p in fit.loss_history], rel=1e-5)
        assert run.eval_loss == pytest.approx(fit.eval_loss, rel=1e-5)


def test_progress_says_which_candidate_runs_and_how_far(three):
    _, lines = three
    assert "[1/3] full (seed 0): starting" in lines
    assert any(line.startswith(f"[3/3] lora (seed 0): step {STEPS}/{STEPS}, loss ") for line in lines)
    assert any(line.startswith("[2/3] head (seed 0): done in ") for line in lines)


def test_json_round_trips(three, tmp_path):
    report, _ = three
    path = tmp_path / "copy.json"
    report.to_json(path)
    again = CompareReport.from_json(path)
    assert again == report and again.table == report.table
    assert CompareReport.from_json(report.to_json()) == report
    assert load_report(report.output_dir) == report  # compare wrote report.json itself
    assert (Path(report.output_dir) / "report.md").read_text().count("| lora |") == 1


def test_plot_writes_a_png(three, tmp_path):
    report, _ = three
    path = report.plot(tmp_path / "plots" / "compare.png")
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 20_000
    assert report.plot(tmp_path / "ppl.png", metric="perplexity").read_bytes()[:8] == PNG


def test_markdown_pandas_and_best(three):
    report, _ = three
    text = report.to_markdown()
    assert text.splitlines()[0].startswith("| candidate | trainable params | peak mem (MiB)")
    assert sum(line.startswith(("| full |", "| head |", "| lora |")) for line in text.splitlines()) == 3
    frame = report.to_pandas()
    assert list(frame.index) == ["full", "head", "lora"]
    assert frame.loc["lora", "trainable_params"] == report.candidate("lora").runs[0].trainable_params
    eval_losses = {c.name: c.runs[0].eval_loss for c in report.candidates}
    assert report.best("loss").name == min(eval_losses, key=eval_losses.get)
    assert report.best("perplexity").name == report.best("loss").name
    assert report.best("trainable_params").name == "lora"
    speeds = {c.name: c.runs[0].tokens_per_second for c in report.candidates}
    assert report.best("tokens_per_second").name == max(speeds, key=speeds.get)
    with pytest.raises(TunekitError, match="no column 'bleu'"):
        report.best("bleu")


# -- the CLI, failures, seeds -----------------------------------------------------------------------
def test_cli_prints_the_table_and_writes_the_report_directory(via_cli):
    rc, stdout, report, out = via_cli
    assert rc == 0
    assert "| candidate |" in stdout and "| lora |" in stdout and "| bad-rank |" in stdout
    assert f"report written to {out}" in stdout
    for name in ("report.json", "report.md", "compare.png"):
        assert (out / name).is_file(), name
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert report.train_data.endswith("train.jsonl") and report.seeds == [0, 1]
    assert (report.train_rows, report.eval_rows) == (32, 8)
    assert "the same 32 training rows in the same order, evaluated on the same 8 rows" in stdout
    assert (Path(report.candidate("lora").runs[1].output_dir) / "model" / "adapter_config.json").is_file()


def test_failing_candidates_become_error_rows_and_the_others_complete(via_cli):
    _, stdout, report, _ = via_cli
    rows = {row["candidate"]: row for row in report.table}
    assert rows["lora"]["status"] == "ok" and rows["lora"]["runs_ok"] == 2
    assert rows["bad-rank"]["status"] == "failed" and "strategy.rank: must be >= 1" in rows["bad-rank"]["error"]
    assert report.candidate("bad-rank").runs == []  # refused before any process started
    no_model = report.candidate("no-model")
    assert no_model.status == "failed" and len(no_model.runs) == 2
    first, second = no_model.runs
    assert "ModelLoadError" in first.error and "does not exist" in first.error and first.seed_independent
    assert second.error.startswith("not run: seed 0 failed in a way no seed changes")  # no process for seed 1
    assert second.log_path is None
    assert "2 of 2 runs failed" in rows["no-model"]["error"]
    assert [c.name for c in report.failed] == ["bad-rank", "no-model"]
    assert "**no-model** failed: 2 of 2 runs failed" in stdout


def test_same_seed_same_losses_and_seeds_give_mean_and_std(via_cli, three):
    _, _, report, _ = via_cli
    lora = report.candidate("lora")
    seed0, seed1 = ([p.loss for p in r.loss_history] for r in lora.runs)
    earlier = [p.loss for p in three[0].candidate("lora").runs[0].loss_history]
    assert seed0 == pytest.approx(earlier, rel=1e-6)  # another comparison, the same seed
    assert seed0 != seed1
    row = next(r for r in report.table if r["candidate"] == "lora")
    finals = [r.train_loss for r in lora.runs]
    assert row["train_loss"] == pytest.approx(statistics.fmean(finals))
    assert row["train_loss_std"] == pytest.approx(statistics.stdev(finals))
    assert "trainable_params_std" not in row
    assert "±" in report.to_markdown()


def test_metrics_beyond_loss_are_measured_or_reported_per_metric(via_cli):
    """exact_match comes from Tuner.evaluate(..., metrics=[...]) where this tunekit has it, else it is an error."""
    _, _, report, out = via_cli
    row = next(r for r in report.table if r["candidate"] == "lora")
    assert row["eval_loss"] is not None and "exact_match_error" not in row
    lora = next(c for c in report.candidates if c.name == "lora")
    # Each seed's figure is what its saved model scores when evaluated again, and the row is their mean.
    again = []
    for run in lora.runs:
        tuner = Tuner.load(run.output_dir, training={"progress_bar": False})
        again.append(tuner.evaluate(out.parent / "eval.jsonl", metrics=["exact_match"]).metrics["exact_match"])
        assert run.metrics["exact_match"] == pytest.approx(again[-1])
    assert row["exact_match"] == pytest.approx(sum(again) / len(again))


# -- no training process needed ---------------------------------------------------------------------
def test_a_run_past_its_timeout_is_stopped_and_reported(model_path, tmp_path):
    report = compare(str(model_path), ["head"], sft_rows(8), budget=2, timeout_s=0.3,
                     output_dir=tmp_path / "r", progress=False)
    (run,) = report.candidate("head").runs
    assert not run.ok and run.error.startswith("TimeoutError") and report.table[0]["status"] == "failed"


def test_candidates_may_not_change_the_shared_budget_seed_or_data(model_path, tmp_path):
    report = compare(
        str(model_path),
        [{"name": "own-seed", "training": {"seed": 3}}, {"name": "own-steps", "strategy": "lora", "training": {"max_steps": 9}},
         {"name": "own-data", "data": {"train": "x.jsonl"}}],
        sft_rows(8), budget=2, output_dir=tmp_path / "r", progress=False,
    )
    errors = {c.name: c.error for c in report.candidates}
    assert "candidates[0].training.seed" in errors["own-seed"] and "seeds=" in errors["own-seed"]
    assert "candidates[1].training.max_steps" in errors["own-steps"]
    assert "candidates[2].data.train" in errors["own-data"]
    assert all(not c.runs for c in report.candidates)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": {"steps": 3}}, "budget.steps"),
        ({"budget": {"max_steps": 3, "tokens": 10}}, "exactly one"),
        ({"budget": {"max_steps": 0}}, "positive integer"),
        ({"seeds": []}, "seeds"),
        ({"metrics": ["loss", {"case_fold": True}]}, "metrics\\[1\\]"),
        ({"seeds": [1, 1]}, "twice"),
        ({"candidates": []}, "empty"),
        ({"candidates": ["lora", 3]}, "candidates\\[1\\]"),
        ({"training": {"max_steps": 5}, "budget": 3}, "budget="),
        ({"training": {"learning_rate": -1}}, "training.learning_rate"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(model_path, tmp_path, kwargs, message):
    args = {"candidates": ["lora"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        compare(str(model_path), train=sft_rows(4), output_dir=tmp_path / "r", progress=False, **args)
    assert not (tmp_path / "r").exists()


def test_bad_data_fails_before_anything_runs(model_path, tmp_path):
    with pytest.raises(DataError, match="fit no row format"):
        compare(str(model_path), ["lora"], [{"question": "q", "answer": "a"}], output_dir=tmp_path / "r", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        compare(str(model_path), ["lora"], str(tmp_path / "nope.jsonl"), output_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_an_existing_report_directory_is_kept_unless_overwrite(model_path, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TunekitError, match="holds files tunekit did not write.*keep.txt"):
        compare(str(model_path), ["lora"], sft_rows(4), output_dir=out, progress=False)
    with pytest.raises(TunekitError, match="holds files tunekit did not write.*keep.txt"):
        compare(str(model_path), ["lora"], sft_rows(4), output_dir=out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "x"


def test_candidate_names_and_config_merging():
    names = [c.name for c in parse_candidates(
        ["lora", {"strategy": {"name": "lora", "rank": 32}}, {"strategy": "lora", "quantizer": "bnb-4bit"},
         {"name": "mine", "strategy": "head"}, "lora", {"strategy": "lora", "training": {"learning_rate": 0.01}}]
    )]
    assert names == ["lora", "lora(rank=32)", "lora+bnb-4bit", "mine", "lora #2", "lora [training.learning_rate=0.01]"]
    merged = merge_config(
        {"model": "m", "strategy": {"name": "lora", "rank": 8}, "training": {"batch_size": 4}},
        {"strategy": "full", "training": {"learning_rate": 0.1}},
    )
    assert merged == {"model": "m", "strategy": "full", "training": {"batch_size": 4, "learning_rate": 0.1}}


def test_budgets_and_token_budgets(model_path, tmp_path):
    from tunekit import TuneConfig

    assert parse_budget(7) == {"max_steps": 7}
    assert parse_budget({"max_tokens": 500}) == {"tokens": 500}
    assert parse_budget({"epochs": 0.5}) == {"epochs": 0.5}
    assert steps_for_tokens(100, mean_tokens_per_row=10, batch_size=5, gradient_accumulation=2) == 1
    assert steps_for_tokens(101, mean_tokens_per_row=10, batch_size=5, gradient_accumulation=1) == 3
    path = tmp_path / "train.jsonl"
    rows = sft_rows(16)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tuner = Tuner(model=str(model_path), strategy="lora")
    tokenized = tuner._prepare(rows).train
    expected = statistics.fmean(len(ids) for ids in tokenized["input_ids"])
    assert tokens_per_row(TuneConfig(model=str(model_path)), str(path)) == pytest.approx(expected)


def test_metrics_go_to_evaluate_when_it_takes_them():
    calls = []

    class EvalWithMetrics:
        metrics = {"loss": 1.0, "exact_match": 0.5, "accuracy": 0.25}

    class Tuner1:
        def evaluate(self, data, metrics=None):
            calls.append(metrics)
            if "broken" in metrics:
                raise ValueError("no such metric 'broken'")
            return EvalWithMetrics()

    class Tuner2:
        def evaluate(self, data):
            raise AssertionError("must not be called")

    accuracy = {"name": "accuracy", "case_fold": True}
    values, errors = evaluate_metrics(Tuner1(), "eval.jsonl", ["loss", "exact_match", accuracy, "broken"])
    assert values == {"exact_match": 0.5, "accuracy": 0.25}
    assert errors == {"broken": "ValueError: no such metric 'broken'"}
    assert calls[0] == ["exact_match", accuracy, "broken"] and [accuracy] in calls  # then one by one
    values, errors = evaluate_metrics(Tuner2(), "eval.jsonl", ["loss", "exact_match"])
    assert values == {} and "metrics argument" in errors["exact_match"]
    values, errors = evaluate_metrics(Tuner1(), None, ["exact_match"])
    assert "no eval set" in errors["exact_match"]


def test_report_statistics_without_runs():
    runs = [
        RunRecord(seed=s, ok=True, trainable_params=10, total_params=100, train_loss=loss, eval_loss=loss,
                  metrics={"exact_match": em}, loss_history=[LogPoint(step=1, loss=loss)])
        for s, loss, em in [(0, 1.0, 0.2), (1, 3.0, 0.4)]
    ]
    good = CandidateResult(name="a", spec="lora", runs=runs)
    bad = CandidateResult(name="b", spec="full", runs=[RunRecord(seed=0, ok=False, error="X: y")])
    assert good.stat("loss") == (2.0, pytest.approx(2 ** 0.5))
    assert good.stat("trainable_percent") == (10.0, 0.0)
    report = CompareReport(tunekit_version="0", created="now", model="m", seeds=[0, 1], train_data="t",
                           output_dir="o", metrics=["loss", "exact_match"], candidates=[good, bad])
    assert report.best("exact_match").name == "a"
    assert report.best("exact_match", higher_is_better=False).name == "a"
    assert bad.status == "failed" and good.status == "ok"
    assert CompareReport.from_json(report.to_json()) == report


# -- the untrained base row ---------------------------------------------------------------------------
def test_base_row_is_the_untrained_model_scored_once(model_path, tmp_path):
    """compare(..., base=True): a first row that trains nothing, evaluated once whatever the seeds,
    whose eval loss is the untrained model's own (the same as Tuner.evaluate gives)."""
    train, held_out = sft_rows(16), sft_rows(8, seed=1)
    lines: list[str] = []
    report = compare(
        str(model_path), ["lora"], train, held_out, budget={"max_steps": 2}, seeds=[0, 1], training=TRAINING,
        keep_models=False, output_dir=tmp_path / "report", progress=lines.append, base=True,
    )
    base, lora = report.candidates
    assert (base.name, base.untrained, lora.untrained) == ("base", True, False)
    assert [r.seed for r in base.runs] == [0] and [r.seed for r in lora.runs] == [0, 1]
    run = base.runs[0]
    assert run.ok, run.error
    assert (run.trainable_params, run.steps, run.tokens_seen) == (0, 0, 0)
    assert run.total_params == lora.runs[0].total_params - lora.runs[0].trainable_params  # the base without the adapters
    untrained = Tuner(model=str(model_path), strategy="full", training=TRAINING).evaluate(held_out)
    assert run.eval_loss == pytest.approx(untrained.loss, rel=1e-5)
    assert any("base (seed 0): evaluated" in line for line in lines)
    assert "| base | 0 (0.00%) |" in report.to_markdown()
    assert load_report(tmp_path / "report").candidates[0].untrained


def test_base_row_is_never_the_best_and_its_name_is_reserved(model_path, tmp_path):
    ran = [RunRecord(seed=0, ok=True, trainable_params=t, total_params=100, eval_loss=loss) for t, loss in ((0, 0.5), (10, 2.0))]
    base = CandidateResult(name="base", spec="base (untrained)", untrained=True, runs=[ran[0]])
    lora = CandidateResult(name="lora", spec="lora", runs=[ran[1]])
    report = CompareReport(tunekit_version="0", created="now", model="m", seeds=[0], train_data="t",
                           output_dir="o", metrics=["loss"], candidates=[base, lora])
    assert report.best("loss").name == "lora" and report.best("trainable_params").name == "lora"
    with pytest.raises(ConfigError, match="named 'base'"):
        compare(str(model_path), ["lora", {"name": "base", "strategy": "head"}], sft_rows(8), base=True,
                output_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="base: must be true or false"):
        compare(str(model_path), ["lora"], sft_rows(8), base="yes", output_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
