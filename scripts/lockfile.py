"""The lock files' link to pyproject.toml: the digest of its dependency lists, and the check that
a lock still matches them. Standard library and pip only, so it runs on a fresh interpreter.

  python scripts/lockfile.py digest             the digest scripts/lock writes into each lock
  python scripts/lockfile.py check LOCK EXTRA   exit 1, naming what is off, if LOCK is stale
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

try:  # a fresh venv has pip, which carries packaging; a dev venv has packaging itself
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - depends on what the interpreter has
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DIGEST_LINE = "# pyproject-dependencies-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def project_table(pyproject: Path) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    return table


def inputs_digest(pyproject: Path) -> str:
    """What a lock is resolved from: the dependency lists (order-free) and requires-python."""
    project = project_table(pyproject)
    inputs = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {
            extra: sorted(items)
            for extra, items in sorted(project.get("optional-dependencies", {}).items())
        },
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def requirements_for(pyproject: Path, extra: str | None) -> list[Requirement]:
    """The project's own requirements plus those of `extra`, its self-references expanded."""
    project = project_table(pyproject)
    name = canonicalize_name(project["name"])
    extras = project.get("optional-dependencies", {})
    wanted, seen, found = [extra] if extra else [], set(), []
    found.extend(Requirement(text) for text in project.get("dependencies", []))
    while wanted:
        current = wanted.pop()
        if current in seen:
            continue
        seen.add(current)
        if current not in extras:
            raise SystemExit(f"pyproject.toml has no extra '{current}'")
        for text in extras[current]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == name:
                wanted.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def stale_reasons(pyproject: Path, lock: Path, extra: str | None) -> list[str]:
    """Why `lock` does not serve pyproject's requirements; empty when it does."""
    if not lock.exists():
        return [f"{lock.name} does not exist"]
    text = lock.read_text()
    pins: dict[str, list[str]] = {}
    for pinned_name, version in PIN.findall(text):
        pins.setdefault(canonicalize_name(pinned_name), []).append(version)
    reasons = []
    for requirement in requirements_for(pyproject, extra):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # not for this interpreter or platform
        versions = pins.get(canonicalize_name(requirement.name))
        if not versions:
            reasons.append(f"{requirement.name} is not in it")
        elif not any(requirement.specifier.contains(v, prereleases=True) for v in versions):
            reasons.append(f"{requirement.name} is pinned at {versions[0]}, outside {requirement}")
    if not reasons and DIGEST_LINE + inputs_digest(pyproject) not in text:
        reasons.append("the dependency lists in pyproject.toml changed since it was made")
    return reasons


def main(argv: list[str]) -> int:
    pyproject = REPO / "pyproject.toml"
    if argv[:1] == ["digest"] and len(argv) == 1:
        print(inputs_digest(pyproject))
        return 0
    if argv[:1] == ["check"] and len(argv) == 3:
        lock = Path(argv[1])
        reasons = stale_reasons(pyproject, lock, argv[2] or None)
        if reasons:
            print(
                f"{lock.parent.name}/{lock.name} is stale: {'; '.join(reasons)}.", file=sys.stderr
            )
            print("Run scripts/lock to regenerate it from pyproject.toml.", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
