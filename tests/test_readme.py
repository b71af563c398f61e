"""The README's front door: at most 200 lines, and its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from cnnkit.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def setup_commands() -> list[str]:
    """The commands of the README's set-up block (the first code block after "## Set up")."""
    section = README.split("## Set up", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 200


def test_two_setup_commands_and_ci_runs_the_second():
    commands = setup_commands()
    assert len(commands) == 2, commands
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [commands[1]], "README's test command and .ci/run differ"
    assert (ROOT / commands[1].split()[-1]).is_file()


def test_readme_links_point_at_existing_files():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), target


def test_readme_names_every_command():
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="cnnkit")
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        subs = command.list_commands(ctx) if hasattr(command, "list_commands") else [""]
        for sub in subs:
            assert f"| `cnnkit {name} {sub}".rstrip() in README, f"cnnkit {name} {sub}"
