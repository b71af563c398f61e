"""The committed CLI reference page is the generated one, whatever the terminal's width."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from cnnkit.cli.app import app
from cnnkit.cli.reference import PAGE, REGENERATE, cli_reference, main
from tests.clitools import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def test_committed_page_is_the_generated_one():
    committed = (ROOT / PAGE).read_text(encoding="utf-8")
    assert committed == cli_reference(), f"the CLI reference is stale: run {REGENERATE}"


def test_every_command_and_option_is_on_the_page():
    page = cli_reference()
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="cnnkit")

    def walk(group, ctx, path):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert f"## `{path} {name}` {{#" in page, name
            sub_ctx = command.context_class(command, info_name=name, parent=ctx)
            for param in command.params:
                names, _ = param.get_help_record(sub_ctx)
                assert f"| `{names}` |" in page, (name, names)
            if hasattr(command, "list_commands"):
                walk(command, sub_ctx, f"{path} {name}")

    walk(root, ctx, "cnnkit")


def test_page_does_not_depend_on_the_terminal_width():
    code = "from cnnkit.cli.reference import cli_reference; print(cli_reference(), end='')"
    pages = []
    for columns in (40, 250):
        env = subprocess_env(columns)
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        pages.append(result.stdout)
    assert pages[0] == pages[1] == cli_reference()


def test_out_writes_the_page(tmp_path):
    out = tmp_path / "cli.md"
    main(["--out", str(out)])
    assert out.read_text(encoding="utf-8") == cli_reference()
