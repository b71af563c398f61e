"""The CLI reference page (docs/reference/cli.md), generated from the Typer app.

Walks the click commands Typer builds from `cnnkit.cli.app.app`, so the page says what
`--help` says: every command, argument and option, with the same help text. Nothing is
wrapped to a terminal's width, so the page is the same everywhere; tests/cli/test_reference.py
fails when the committed page is not the generated one.

    python -m cnnkit.cli.reference --out docs/reference/cli.md
"""

from __future__ import annotations

import re

import typer

from cnnkit.cli.app import app
from cnnkit.io import generated_page_main

PAGE = "docs/reference/cli.md"
REGENERATE = f"python -m cnnkit.cli.reference --out {PAGE}"


def _escape(text: str) -> str:
    """Markdown-safe prose: `<class>` outside code spans is not read as HTML, `|` not as a cell."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "".join(parts).replace("|", "\\|")


def _help_markdown(text: str) -> list[str]:
    """A command's docstring: its paragraphs, and its `Example:` as a code block."""
    lines: list[str] = []
    for paragraph in (p.strip() for p in (text or "").split("\n\n")):
        if not paragraph:
            continue
        if paragraph.startswith("Example:"):
            lines += ["Example:", "", "```", paragraph.removeprefix("Example:").strip(), "```", ""]
        else:
            lines += [_escape(" ".join(paragraph.split())), ""]
    return lines


def _usage(command, path: str) -> str:
    pieces = [path]
    if getattr(command, "params", None) and any(not _is_argument(p) for p in command.params):
        pieces.append("[OPTIONS]")
    for param in command.params:
        if _is_argument(param):
            name = param.name.upper() + ("..." if param.nargs == -1 else "")
            pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _is_argument(param) -> bool:
    return param.param_type_name == "argument"


def _params_table(command, ctx) -> list[str]:
    rows = []
    for param in command.params:
        record = None if getattr(param, "hidden", False) else param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        rows.append(f"| `{names}` | {_escape(' '.join(help_text.split()))} |")
    if not rows:
        return []
    return ["| argument / option | what |", "|---|---|", *rows, ""]


def _command_section(command, ctx, path: str, level: int) -> list[str]:
    anchor = path.replace(" ", "-")
    lines = [f"{'#' * level} `{path}` {{#{anchor}}}", "", "```", _usage(command, path), "```", ""]
    lines += _help_markdown(command.help)
    lines += _params_table(command, ctx)
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            sub_ctx = sub.context_class(sub, info_name=name, parent=ctx)
            lines += _command_section(sub, sub_ctx, f"{path} {name}", level + 1)
    return lines


def cli_reference() -> str:
    """The page, as committed: every command of `cnnkit`, in `cnnkit --help` order."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="cnnkit")
    lines = [
        "# CLI reference",
        "",
        f"<!-- generated from the Typer app; do not edit: regenerate with `{REGENERATE}` -->",
        "",
        "Every command also takes `--help`, which prints the same text in the terminal.",
        "",
        "| command | what |",
        "|---|---|",
    ]
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        summary = _escape(command.help.split("\n")[0])
        lines.append(f"| [`cnnkit {name}`](#cnnkit-{name}) | {summary} |")
    lines.append("")
    lines += _command_section(root, ctx, "cnnkit", 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    generated_page_main(argv, "CLI reference", PAGE, cli_reference)


if __name__ == "__main__":
    main()
