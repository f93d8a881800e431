"""docs/DEPLOYMENT.md holds the settings table the code renders; every setting has a meaning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import msgspec.inspect as mi
import pytest

from gateway.config import Secret, Settings
from gateway.settings_doc import (
    BEGIN,
    COMMAND,
    DESCRIPTIONS,
    DOCUMENT,
    END,
    describe_default,
    describe_type,
    main,
    render_table,
    setting_rows,
    splice,
)

ENV_NAMES = [field.encode_name for field in msgspec.structs.fields(Settings)]


def test_every_setting_has_a_description() -> None:
    missing = [name for name in ENV_NAMES if not DESCRIPTIONS.get(name, "").strip()]
    assert not missing, (
        f"add a line to DESCRIPTIONS in gateway/settings_doc.py for {', '.join(missing)}, "
        f"then run `{COMMAND}`"
    )


def test_no_description_outlives_its_setting() -> None:
    stale = sorted(set(DESCRIPTIONS) - set(ENV_NAMES))
    assert not stale, f"remove from DESCRIPTIONS in gateway/settings_doc.py: {', '.join(stale)}"


def test_the_deployment_guide_holds_the_table_the_code_renders() -> None:
    document = DOCUMENT.read_text(encoding="utf-8")
    assert BEGIN in document, f"docs/DEPLOYMENT.md lost its {BEGIN} marker"
    assert END in document, f"docs/DEPLOYMENT.md lost its {END} marker"
    assert splice(document, render_table(setting_rows())) == document, (
        f"the settings table in docs/DEPLOYMENT.md is stale: run `{COMMAND}`"
    )


def test_a_row_per_setting_with_secrets_never_shown() -> None:
    rows = {row.env: row for row in setting_rows()}
    assert list(rows) == ENV_NAMES
    assert rows["GATEWAY_BIND_PORT"].kind == "integer, ≥ 1, ≤ 65535"
    assert rows["GATEWAY_BIND_PORT"].default == "`8080`"
    assert rows["LEASE_TTL_S"].kind == "number, ≥ 3"
    assert rows["OLLAMA_READ_TIMEOUT_S"].default == "`600`"
    assert rows["GATEWAY_TRUSTED_PROXIES"].kind == "comma-separated list"
    assert rows["GATEWAY_LOG_FORMAT"].kind == "one of `json`, `text`"
    for secret in ("DATABASE_URL", "REDIS_URL", "OLLAMA_AUTH_TOKEN"):
        assert rows[secret].default == "(unset)"
        assert "secret" in rows[secret].kind


def test_types_and_defaults_read_as_an_operator_writes_them() -> None:
    def kind(annotation: object) -> str:
        return describe_type(mi.type_info(annotation))

    assert kind(bool) == "boolean (`true` / `false`)"
    assert kind(Annotated[float, msgspec.Meta(gt=0, lt=1.5)]) == "number, > 0, < 1.5"
    assert kind(Literal["a"]) == "one of `a`"
    assert kind(Annotated[str, msgspec.Meta(pattern="^(a|b)$")]) == "string matching `^(a|b)$`"
    assert kind(Secret | None) == "secret, optional"
    assert kind(int | None) == "integer, optional"
    assert describe_default(True, secret=False) == "`true`"
    assert describe_default(0.25, secret=False) == "`0.25`"
    assert describe_default((), secret=False) == "(empty)"
    assert describe_default("", secret=False) == "(empty)"
    assert describe_default(("10.0.0.2", "10.0.0.3"), secret=False) == "`10.0.0.2,10.0.0.3`"
    assert describe_default("postgresql://u:p@h/d", secret=True) == "(unset)"


def test_a_pipe_in_a_cell_does_not_split_the_table() -> None:
    rows = setting_rows({name: "a | b" for name in ENV_NAMES})
    line = render_table(rows).splitlines()[2]
    cells = re.split(r"(?<!\\)\|", line)[1:-1]  # split on the pipes Markdown splits on
    assert len(cells) == 4
    assert cells[3].strip() == "a \\| b"


def test_splice_replaces_only_between_the_markers() -> None:
    document = f"# Title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    once = splice(document, "| new |")
    assert once.startswith(f"# Title\n\nbefore\n{BEGIN}\n")
    assert once.endswith(f"| new |\n{END}\nafter\n")
    assert "old table" not in once
    assert splice(once, "| new |") == once
    with pytest.raises(ValueError, match="settings:begin"):
        splice("no markers here", "| new |")


def test_the_command_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "DEPLOYMENT.md"
    target.write_text(f"# Deploy\n{BEGIN}\nstale\n{END}\n", encoding="utf-8")
    assert main(["--check", "--file", str(target)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--write", "--file", str(target)]) == 0
    assert "`GATEWAY_BIND_PORT`" in target.read_text(encoding="utf-8")
    assert main(["--check", "--file", str(target)]) == 0
    target.write_text("no markers", encoding="utf-8")
    assert main(["--write", "--file", str(target)]) == 2
    assert str(tmp_path) not in capsys.readouterr().err
