"""Every command's --help has a one-line description and an example; completion is on."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cnnkit.cli.app import app


def all_commands() -> list[tuple[tuple[str, ...], object]]:
    """Every command and sub-command of the CLI, whoever added it."""
    found = []

    def walk(group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            found.append(((*path, name), command))
            if is_group(command):
                walk(command, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def is_group(command) -> bool:
    return hasattr(command, "commands")  # click.Group (typer vendors its own click)


COMMANDS = all_commands()


def test_the_commands_are_found():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "check", "summary", "schema", "init", "data check"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_help_has_one_line_description_and_example(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    first_paragraph = (command.help or "").strip().split("\n\n")[0]
    assert first_paragraph and "\n" not in first_paragraph, f"{path}: {first_paragraph!r}"
    assert len(first_paragraph) <= 100
    if not is_group(command):
        example = f"Example: cnnkit {' '.join(path)}"
        assert example in command.help, f"`cnnkit {' '.join(path)} --help` has no example"
        assert example in result.output


def test_shell_completion_is_installable():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_version_prints_cnnkit_and_its_main_dependencies():
    from importlib.metadata import version

    from cnnkit import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"cnnkit {__version__} (Python ")
    assert f"numba {version('numba')}" in line and f"numpy {version('numpy')}" in line


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_help_paragraphs_fill_80_columns(path, command):
    """No sentence breaks early where the docstring did: every line of the description that
    a line of the same paragraph follows reaches near the edge."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    description = result.output.split("╭")[0].splitlines()[3:]  # after the Usage line
    for line, following in zip(description, description[1:], strict=False):
        if line.strip() and following.strip():
            assert len(line.rstrip()) >= 55, f"`{' '.join(path)} --help` breaks early: {line!r}"
