"""Run cnnkit's real entry point (cnnkit.cli.main: error panels, exit codes) in-process:
a subprocess costs about a second of imports."""

from __future__ import annotations

import sys

from cnnkit import cli, display


def run_cli(*args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cnnkit ARGS...`."""
    monkeypatch.setattr(sys, "argv", ["cnnkit", *args])
    for console in (display.console, display.error_console):
        monkeypatch.setattr(console, "width", 1000)  # long tmp paths unwrapped
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    """Panel text without its borders and line wrapping."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())
