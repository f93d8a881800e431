"""Checks run by scripts/test and CI: lint, typecheck, tests with a coverage gate.

Sessions use the tools of the current environment (scripts/test puts .venv/bin first on PATH)
rather than building a virtualenv each.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]

REPO = Path(__file__).parent
# The code that decides who may spend what, and which backend may be sent a request and when:
# every line must be exercised by a test.
FULL_COVERAGE_FILES = (
    "gateway/chain/auth.py",
    "gateway/clientip.py",
    "gateway/chain/admission.py",
    "gateway/chain/limits.py",
    "gateway/chain/budget.py",
    "gateway/ledger.py",
    "gateway/models.py",
    "gateway/keys.py",
    "gateway/upstream/breaker.py",
    "gateway/upstream/slots.py",
)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The offline half of `security`, so a finding fails CI on the commit that brings it.
    session.run("bandit", "--configfile", "pyproject.toml", "--quiet", "--recursive", "gateway")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    session.run("mypy", "--strict", "gateway")


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    # --strict turns every broken link, missing nav file and unknown anchor into a failure.
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(REPO / "site"),
        env={"NO_MKDOCS_2_WARNING": "1"},  # a notice about the theme's future, not about us
    )  # fmt: skip


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    session.run("pytest", "--cov=gateway", "--cov-report=term", *session.posargs)
    if session.posargs:
        # A chosen subset of tests cannot be held to full coverage.
        session.log("coverage gate skipped: pytest arguments given")
        return
    # Only the files that exist yet, so the gate works while the code is being written.
    gated = [name for name in FULL_COVERAGE_FILES if (REPO / name).exists()]
    if not gated:
        session.log("coverage gate: none of the gated files exist yet")
        return
    session.run("coverage", "report", "--fail-under=100", "--include=" + ",".join(gated))


@nox.session(venv_backend="none")
def security(session: nox.Session) -> None:
    """Static security checks of gateway/ and the known advisories of the locked dependencies.

    Not in the default sessions: the advisory check asks an outside service, so its answer can
    change (or be missing) from one run to the next without any change here. The static checks
    run in `lint` too.
    """
    # --select drops the configured ignores: S101 (asserts narrow types) is named again.
    session.run("ruff", "check", "--select", "S", "--ignore", "S101", "gateway", "scripts")
    session.run("bandit", "--configfile", "pyproject.toml", "--quiet", "--recursive", "gateway")
    session.run("python", "scripts/audit.py")
