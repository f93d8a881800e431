"""Known advisories against the locked dependency sets (pip-audit), for `nox -s security`.

Exit 1 on any advisory. When the advisory service cannot be reached, or answers about none of
the packages, say so plainly and exit 0: an outage is not a finding, but it is never a pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCKS = ("requirements/runtime.lock", "requirements/dev.lock")
# What pip-audit prints when it never got an answer (connection, DNS, TLS, timeout).
UNREACHABLE_MARKS = (
    "ConnectionError",
    "NameResolutionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "timed out",
    "SSLError",
    "ProxyError",
)


@dataclass(frozen=True)
class Verdict:
    findings: list[str]  # "name version: ID, ID"
    unchecked: list[str]  # names the service said nothing about
    checked: int

    @property
    def service_silent(self) -> bool:
        """No package was actually checked: the service is out of reach in all but name."""
        return self.checked == 0 and bool(self.unchecked)


def judge(report: dict[str, Any]) -> Verdict:
    """Sort pip-audit's JSON report into advisories found and packages left unchecked."""
    findings, unchecked, checked = [], [], 0
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:
            unchecked.append(dependency["name"])
            continue
        checked += 1
        ids = [vuln["id"] for vuln in dependency.get("vulns", [])]
        if ids:
            findings.append(f"{dependency['name']} {dependency['version']}: {', '.join(ids)}")
    return Verdict(findings, unchecked, checked)


def audit(lock: str) -> int:
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "report.json"
        run = subprocess.run(  # noqa: S603 - our own interpreter and lock paths, no shell
            [sys.executable, "-m", "pip_audit", "--requirement", str(REPO / lock),
             "--require-hashes", "--disable-pip", "--progress-spinner", "off",
             "--format", "json", "--output", str(output)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if not output.exists() or not output.read_text().strip():
            detail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            if any(mark in run.stderr for mark in UNREACHABLE_MARKS):
                print(f"audit: {lock}: the advisory service could not be reached ({detail});")
                print("audit: NOT CHECKED for known vulnerabilities (not counted as a failure)")
                return 0
            print(f"audit: {lock}: pip-audit failed: {detail}", file=sys.stderr)
            return 1
        verdict = judge(json.loads(output.read_text()))
    if verdict.findings:
        print(f"audit: {lock}: {len(verdict.findings)} package(s) with known advisories:")
        for line in verdict.findings:
            print(f"  {line}")
        return 1
    if verdict.service_silent:
        print(f"audit: {lock}: the advisory service answered about none of its "
              f"{len(verdict.unchecked)} packages (out of reach or blocked);")  # fmt: skip
        print("audit: NOT CHECKED for known vulnerabilities (not counted as a failure)")
        return 0
    print(f"audit: {lock}: {verdict.checked} packages checked, no known advisories")
    if verdict.unchecked:
        print(f"audit: not known to the service, so unchecked: {', '.join(verdict.unchecked)}")
    return 0


def main() -> int:
    return max(audit(lock) for lock in LOCKS)


if __name__ == "__main__":
    sys.exit(main())
