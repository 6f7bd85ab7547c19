"""tunekit touches only what it wrote: run directories, saves and compare reports (docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import quick

from tunekit import TunekitError, Tuner
from tunekit.run_directory import LOCK, MARKER, OutputDirError, RunLockedError, read_marker
from tunekit.testing import sft_rows


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _tuner(model: Path, out: Path, **training) -> Tuner:
    return Tuner(model=str(model), output_dir=str(out), training=quick(max_steps=2, **training))


def _weights(tuner: Tuner) -> dict[str, list[float]]:
    return {n: p.detach().flatten().tolist() for n, p in tuner.model.named_parameters() if p.requires_grad}


# -- what counts as tunekit's ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["cwd", "home", "root", "parent-of-cwd"])
def test_unsafe_output_dirs_are_refused_outright(tiny_gpt2, tmp_path, monkeypatch, where):
    home, project = tmp_path / "home", tmp_path / "home" / "project"
    project.mkdir(parents=True)
    (project / "tunekit.yaml").write_text("model: gpt2\n")  # a user's own config: not a run marker
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    out = {"cwd": ".", "home": str(home), "root": "/", "parent-of-cwd": str(home)}[where]
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError, match="current directory|home directory|filesystem root"):
        Tuner(model=str(tiny_gpt2), output_dir=out, training=quick(max_steps=1)).fit(sft_rows(4), overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_user_folder_with_a_tunekit_yaml_is_not_a_run(tiny_gpt2, tmp_path):
    mine = tmp_path / "mine"
    (mine / ".git").mkdir(parents=True)
    (mine / "tunekit.yaml").write_text("model: gpt2\n")
    (mine / "README.md").write_text("my project")
    before = snapshot(tmp_path)
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(OutputDirError, match=r"holds files tunekit did not write \('.git', 'README.md', 'tunekit.yaml'\)"):
            _tuner(tiny_gpt2, mine).fit(sft_rows(4), **kwargs)
    assert snapshot(tmp_path) == before


def test_output_dir_that_is_a_file_or_a_symlink(tiny_gpt2, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    for out, message in [("file", "is a file"), ("link", "symbolic link")]:
        with pytest.raises(OutputDirError, match=message):
            _tuner(tiny_gpt2, tmp_path / out).fit(sft_rows(4))
    assert snapshot(tmp_path) == before


def test_a_read_only_output_dir_is_refused(tiny_gpt2, tmp_path):
    """As a user: a directory without write permission. As root (CI), who writes through
    permissions: a read-only filesystem (a tmpfs mounted ro), which refuses root too."""
    import shutil as sh

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        if sh.which("mount") is None:
            pytest.skip("root needs mount(8) to make a read-only filesystem")
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"mount is not permitted here: {made.stderr.strip()}")
        mounted = True
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(OutputDirError, match="not writable"):
            _tuner(tiny_gpt2, ro / "run").fit(sft_rows(4))
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def test_a_failed_first_run_leaves_nothing_behind(tiny_gpt2, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(TunekitError):
        _tuner(tiny_gpt2, out).fit([{"prompt": "x", "completion": ""}] * 4)  # nothing to train: a preflight error
    assert not (tmp_path / "a").exists()


# -- overwrite is a transaction ---------------------------------------------------------------------------
def test_overwrite_keeps_the_old_run_until_the_new_one_is_saved(tiny_gpt2, tmp_path):
    from tunekit.training.trainer import NonFiniteLossError

    out = tmp_path / "run"
    first = _tuner(tiny_gpt2, out)
    first.fit(sft_rows(8))
    old = snapshot(out)
    old_weights = _weights(Tuner.load(out))

    old_run_id = read_marker(out)["run_id"]
    failing = Tuner(model=str(tiny_gpt2), output_dir=str(out), strategy="full", training=quick(max_steps=4))

    def poison(module, args, output):  # the new run's loss becomes NaN
        output.logits = output.logits * float("nan")
        if output.loss is not None:
            output.loss = output.loss * float("nan")
        return output

    failing.model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError):
        failing.fit(sft_rows(8), overwrite=True)
    assert snapshot(out) == old  # untouched, byte for byte
    assert not list(tmp_path.glob(".tunekit-*"))  # the staging directory went with the failed run
    assert _weights(Tuner.load(out)) == old_weights

    second = _tuner(tiny_gpt2, out, learning_rate=5e-2)
    result = second.fit(sft_rows(8), overwrite=True)
    assert result.output_dir == str(out)
    assert read_marker(out)["state"] == "complete" and read_marker(out)["run_id"] != old_run_id
    assert _weights(Tuner.load(out)) != old_weights
    assert not list(tmp_path.glob(".tunekit-*"))


def test_overwrite_refuses_a_run_holding_the_users_files(tiny_gpt2, tmp_path):
    out = tmp_path / "run"
    _tuner(tiny_gpt2, out).fit(sft_rows(8))
    (out / "notes.ipynb").write_text("{}")
    (out / "README.md").write_text("edited by me")  # tunekit wrote it, the user changed it: theirs now
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError, match=r"'README.md \(changed since tunekit wrote it\)', 'notes.ipynb'"):
        _tuner(tiny_gpt2, out).fit(sft_rows(8), overwrite=True)
    assert snapshot(tmp_path) == before


def test_save_overwrite_replaces_only_a_tunekit_save(tiny_gpt2, tmp_path):
    tuner = _tuner(tiny_gpt2, tmp_path / "run")
    tuner.fit(sft_rows(8))
    target = tuner.save(tmp_path / "adapter")
    assert read_marker(target)["kind"] == "save"
    tuner.save(target, overwrite=True)  # a tunekit save: replaced
    (target / "mine.txt").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(OutputDirError, match="mine.txt"):
        tuner.save(target, overwrite=True)
    with pytest.raises(OutputDirError, match="not a 'save' one|'fit'"):
        tuner.save(tmp_path / "run", overwrite=True)  # a run directory is not a save
    assert snapshot(tmp_path) == before


def test_an_interrupted_swap_is_put_right(tiny_gpt2, tmp_path, monkeypatch):
    """Where no atomic exchange exists, a swap is two renames; a kill between them is recovered."""
    from tunekit import run_directory

    out = tmp_path / "run"
    _tuner(tiny_gpt2, out).fit(sft_rows(8))
    old_weights = _weights(Tuner.load(out))
    monkeypatch.setattr(run_directory, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename_then_die(src, dst):
        real_rename(src, dst)
        if Path(dst).name.startswith(".tunekit-old-"):
            raise KeyboardInterrupt("killed between the two renames")

    monkeypatch.setattr(run_directory.os, "rename", rename_then_die)
    monkeypatch.setattr(run_directory.Claim, "abort", lambda self: None)  # a killed process cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        _tuner(tiny_gpt2, out, learning_rate=5e-2).fit(sft_rows(8), overwrite=True)
    monkeypatch.setattr(run_directory.os, "rename", real_rename)
    assert not out.exists()  # cut between the renames
    # the new run was complete (marked so before the swap): loading finishes the swap
    assert _weights(Tuner.load(out)) != old_weights
    assert not list(tmp_path.glob(".tunekit-*"))


# -- resume is checked -----------------------------------------------------------------------------------
def test_resume_refuses_a_changed_config_or_data_naming_what_changed(tiny_gpt2, tmp_path):
    from tunekit.training.resume import ResumeMismatchError

    out = tmp_path / "run"
    _tuner(tiny_gpt2, out, save_steps=1).fit(sft_rows(8))
    before = snapshot(tmp_path)
    changed = Tuner(model=str(tiny_gpt2), output_dir=str(out), strategy={"name": "lora", "rank": 4},
                    training=quick(max_steps=3, save_steps=1, learning_rate=1e-3))
    with pytest.raises(ResumeMismatchError, match=r"strategy.rank: 8 -> 4(.|\n)*training.learning_rate: null -> 0.001"):
        changed.fit(sft_rows(8), resume=True)
    with pytest.raises(ResumeMismatchError, match=r"data \(training rows, tokenized\): changed"):
        _tuner(tiny_gpt2, out, save_steps=1).fit(sft_rows(9), resume=True)
    assert snapshot(tmp_path) == before  # a refused resume leaves the run (its marker included) as it was
    with pytest.raises(ResumeMismatchError, match="does not fit this model"):  # accepted, but rank 4 cannot load rank 8
        changed.fit(sft_rows(8), resume=True, accept_changes=True)
    lr_only = Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=3, save_steps=1, learning_rate=1e-3))
    assert lr_only.fit(sft_rows(8), resume=True, accept_changes=True).steps == 3


def test_resume_skips_damaged_checkpoints_and_uses_the_newest_intact_one(tiny_gpt2, tmp_path, caplog):
    out = tmp_path / "run"
    Tuner(model=str(tiny_gpt2), output_dir=str(tmp_path / "ref"), training=quick(max_steps=6, save_steps=2, keep_checkpoints=None)).fit(sft_rows(16))
    expected = _weights(Tuner.load(tmp_path / "ref"))

    with pytest.raises(KeyboardInterrupt):
        _stop_after(tiny_gpt2, out, steps=5)  # logged before step 5 is saved: checkpoints 2 and 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    newest = out / "checkpoint-4" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (out / "checkpoint-99").mkdir()  # empty
    caplog.set_level("WARNING")
    resumed = Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=6, save_steps=2, keep_checkpoints=None))
    result = resumed.fit(sft_rows(16), resume=True)
    assert "skipping the damaged checkpoint" in caplog.text and "checkpoint-99" in caplog.text and "truncated" in caplog.text
    assert [p.step for p in result.loss_history][0] == 3  # from checkpoint-2, not from scratch
    got = _weights(Tuner.load(out))
    for name, values in expected.items():
        assert got[name] == pytest.approx(values, rel=1e-4, abs=1e-6)


def _stop_after(model: Path, out: Path, *, steps: int) -> None:
    """Train until ``steps`` and stop as a crash would (no final save)."""
    from tunekit import hookimpl
    from tunekit.plugins import register_plugin

    class Crash:
        fired = False

        @hookimpl
        def on_log(self, tuner, step, logs):
            if step == steps and "loss" in logs and not self.fired:
                self.fired = True  # once: the resume that follows runs with the plugin still registered
                raise KeyboardInterrupt("crash")

    register_plugin(Crash(), name="crash")
    Tuner(model=str(model), output_dir=str(out), training=quick(max_steps=6, save_steps=2, keep_checkpoints=None)).fit(sft_rows(16))


def test_resuming_a_finished_run_trains_nothing(tiny_gpt2, tmp_path, caplog):
    out = tmp_path / "run"
    first = _tuner(tiny_gpt2, out).fit(sft_rows(8))
    before = snapshot(out)
    caplog.set_level("WARNING")
    again = _tuner(tiny_gpt2, out).fit(sft_rows(8), resume=True)
    assert "nothing to train" in caplog.text
    assert again.steps == first.steps and again.train_loss == first.train_loss
    assert {k: v for k, v in snapshot(out).items() if k != MARKER} == {k: v for k, v in before.items() if k != MARKER}
    longer = Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=3, save_steps=1))
    assert longer.fit(sft_rows(8), resume=True).steps == 3  # a bigger budget does train


# -- one writer at a time -------------------------------------------------------------------------------
def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tiny_gpt2, tmp_path, caplog):
    out = tmp_path / "run"
    _tuner(tiny_gpt2, out).fit(sft_rows(8))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": "now"}))
        before = snapshot(tmp_path)
        with pytest.raises(RunLockedError, match=f"PID {holder.pid}"):
            Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=3)).fit(sft_rows(8), resume=True)
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    caplog.set_level("WARNING")
    Tuner(model=str(tiny_gpt2), output_dir=str(out), training=quick(max_steps=3)).fit(sft_rows(8), resume=True)
    assert "stale lock" in caplog.text and not (out / LOCK).exists()


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
if sys.argv[2] == "write":
    os.write(fd, ('{"pid": %d, "host": "%s", "since": "now"}' % (os.getpid(), os.uname().nodename)).encode())
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("content", ["empty", "write"])
def test_a_lock_being_made_refuses_and_a_killed_holder_frees_it(tmp_path, content):
    from tunekit.run_directory import acquire_lock, release_lock

    directory = tmp_path / "run"
    directory.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory / LOCK), content], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # "empty": the holder has the lock but has not written its PID yet; the old PID-file lock read that as stale.
        with pytest.raises(RunLockedError, match="it is starting" if content == "empty" else f"PID {holder.pid}"):
            acquire_lock(directory)
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the kernel drops its flock
        holder.wait()
    acquire_lock(directory)
    assert json.loads((directory / LOCK).read_text())["pid"] == os.getpid()
    acquire_lock(directory)  # taking a lock this process holds is a no-op
    release_lock(directory)
    assert not (directory / LOCK).exists()


SCRIPT = """
import sys, json
from tunekit import Tuner, TunekitError
from tunekit.testing import sft_rows
model, out, mode = sys.argv[1:4]
try:
    r = Tuner(model=model, output_dir=out, training={"max_steps": 6, "batch_size": 4, "progress_bar": False, "save_steps": 3}).fit(
        sft_rows(16), resume=mode == "resume", overwrite=mode == "overwrite")
    print("OK", r.steps)
except TunekitError as exc:
    print("REFUSED", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("mode", ["fresh", "resume", "overwrite"])
def test_two_processes_writing_one_run_directory(tiny_gpt2, tmp_path, mode):
    out = tmp_path / "run"
    if mode != "fresh":
        _tuner(tiny_gpt2, out).fit(sft_rows(8))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_gpt2), str(out), mode], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    outputs = [out if out.strip() else f"no output; stderr: {err[-3000:]}" for out, err in results]
    ok = [o for o in outputs if o.startswith("OK")]
    refused = [o for o in outputs if o.startswith("REFUSED")]
    # Both may succeed one after the other (the second sees a finished run and, for resume, trains nothing);
    # never both at once: every success leaves a loadable run and no process sees a raw error.
    assert len(ok) + len(refused) == 2, outputs
    assert ok, outputs
    for line in refused:
        assert "RunLockedError" in line or "OutputDirError" in line, line
    Tuner.load(out)
    assert read_marker(out)["state"] == "complete" and not (out / LOCK).exists()
    assert not list(tmp_path.glob(".tunekit-*"))


# -- paths and config files -------------------------------------------------------------------------------
def test_a_data_path_is_literal_never_a_glob(tmp_path):
    from tunekit.config import DataOptions
    from tunekit.data.pipeline import prepare_rows

    (tmp_path / "set[1].jsonl").write_text('{"text": "the right file"}\n')
    (tmp_path / "set1.jsonl").write_text('{"text": "the wrong file"}\n')
    rows = prepare_rows(str(tmp_path / "set[1].jsonl"), None, DataOptions(), seed=0)
    assert rows.train["text"] == ["the right file"]
    (tmp_path / "s*.jsonl").write_text('{"text": "star"}\n')
    assert prepare_rows(str(tmp_path / "s*.jsonl"), None, DataOptions(), seed=0).train["text"] == ["star"]


def test_a_compare_config_cannot_import_a_module_from_the_path(tmp_path, monkeypatch):
    from tunekit import ConfigError
    from tunekit.comparison.config_file import compare_from_file

    (tmp_path / "evil.py").write_text("open(__file__ + '.ran', 'w').write('ran')\n")
    (tmp_path / "c.yaml").write_text("model: gpt2\ncandidates: [lora]\nplugins: [evil]\ndata: {train: t.jsonl}\n")
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'evil', which is not an installed tunekit plugin"):
        compare_from_file(tmp_path / "c.yaml", output_dir=str(tmp_path / "report"))
    assert not (tmp_path / "evil.py.ran").exists() and not (tmp_path / "report").exists()


def test_compare_overwrite_keeps_the_old_report_when_the_data_is_missing(tiny_gpt2, tmp_path):
    from tunekit import compare

    out = tmp_path / "report"
    compare(str(tiny_gpt2), ["lora"], sft_rows(8), budget={"max_steps": 1}, output_dir=out, progress=False)
    before = snapshot(out)
    with pytest.raises(TunekitError, match="does not exist"):
        compare(str(tiny_gpt2), ["lora"], str(tmp_path / "missing.jsonl"), budget={"max_steps": 1}, output_dir=out,
                overwrite=True, progress=False)
    assert snapshot(out) == before
    (out / "analysis.ipynb").write_text("{}")
    with pytest.raises(OutputDirError, match="analysis.ipynb"):
        compare(str(tiny_gpt2), ["lora"], sft_rows(8), budget={"max_steps": 1}, output_dir=out, overwrite=True, progress=False)
    (out / "analysis.ipynb").unlink()
    report = compare(str(tiny_gpt2), ["head"], sft_rows(8), budget={"max_steps": 1}, output_dir=out, overwrite=True, progress=False)
    assert [c.name for c in report.candidates] == ["head"]
    assert not list(out.glob(".tunekit-new-*"))


def test_without_flock_a_new_empty_lock_refuses_and_an_old_one_is_taken(tmp_path, monkeypatch):
    """On a filesystem without flock the PID in the file is the lock: a lock file just created, its PID
    not written yet, belongs to a process still starting; one that stayed empty is a crash's leftover."""
    from tunekit import run_directory
    from tunekit.run_directory import acquire_lock, release_lock

    monkeypatch.setattr(run_directory, "_try_flock", lambda fd: None)
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / LOCK).write_text("")
    with pytest.raises(RunLockedError, match="it is starting"):
        acquire_lock(directory)
    old = time.time() - 2 * run_directory.FRESH_LOCK_S
    os.utime(directory / LOCK, (old, old))
    acquire_lock(directory)
    assert json.loads((directory / LOCK).read_text())["pid"] == os.getpid()
    release_lock(directory)
    assert not (directory / LOCK).exists()


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_is_a_link_to_a_users_file_is_refused_and_the_file_kept(tiny_gpt2, tmp_path, kind):
    """The lock is truncated and rewritten when taken: a .tunekit-lock that links to another file (put there by
    someone, or copied over with a run) must not make tunekit write through it."""
    out = tmp_path / "run"
    _tuner(tiny_gpt2, out).fit(sft_rows(8))
    precious = tmp_path / "notes.txt"
    precious.write_text("the user's own notes")
    (out / LOCK).symlink_to(precious) if kind == "symlink" else os.link(precious, out / LOCK)
    before = snapshot(out)
    with pytest.raises(OutputDirError, match="not tunekit's lock file"):
        _tuner(tiny_gpt2, out).fit(sft_rows(8), resume=True)
    assert precious.read_text() == "the user's own notes"
    assert snapshot(out) == before
