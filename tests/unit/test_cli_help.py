"""Every `gateway` command's --help exits 0, shows an example of itself and explains every
parameter; the commands are walked from the App, so a new one is covered without an edit here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cyclopts import App

from gateway.cli import app, main

Path = tuple[str, ...]


def walk(parent: App, path: Path = ()) -> Iterator[tuple[Path, App]]:
    for name in parent:
        if name.startswith("-"):  # --help, --version: flags, not commands
            continue
        command = parent[name]
        yield (*path, name), command
        yield from walk(command, (*path, name))


COMMANDS: dict[Path, App] = {(): app, **dict(walk(app))}


def shown(path: Path) -> str:
    return " ".join(("gateway", *path))


def help_text(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def wide_and_storeless(monkeypatch: pytest.MonkeyPatch) -> None:
    # Wide enough that no example wraps; no stores, since help must not need them.
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


def test_the_walk_reaches_nested_commands() -> None:
    # Guards the walker: were it to find nothing, every test below would pass on nothing.
    assert ("keys", "create") in COMMANDS
    assert ("serve",) in COMMANDS
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("path", list(COMMANDS), ids=shown)
def test_help_shows_an_example_of_the_command(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(path, capsys)
    assert text.startswith(f"Usage: {shown(path)}")
    _, found, rest = text.partition("\nExamples")
    assert found, f"`{shown(path)} --help` has no Examples section"
    section = rest.split("╭", 1)[0]  # up to the first panel (Commands, Parameters)
    lines = [line.strip().removeprefix("•").strip() for line in section.splitlines()]
    examples = [line for line in lines if line.startswith("gateway ")]
    assert examples, f"`{shown(path)} --help` shows no example"
    assert any(line.startswith(f"{shown(path)} ") or line == shown(path) for line in examples)


@pytest.mark.parametrize("path", list(COMMANDS), ids=shown)
def test_every_parameter_is_explained(path: Path) -> None:
    command = COMMANDS[path]
    assert command.help.strip(), f"{shown(path)} has no description"
    if command.default_command is None:
        return  # a group of commands: its commands are walked on their own
    for argument in command.assemble_argument_collection(parse_docstring=True):
        if argument.show:
            assert (argument.parameter.help or "").strip(), f"{shown(path)} {argument.name}"


def test_the_top_level_help_lists_each_command_with_its_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_text((), capsys)
    for name in app:
        if name.startswith("-"):
            continue
        summary = app[name].help.strip().splitlines()[0].replace("`", "")
        assert any(
            line.strip("│ ").startswith(name) and summary in line for line in text.splitlines()
        ), name
