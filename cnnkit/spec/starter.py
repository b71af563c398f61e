"""`cnnkit init`: write a commented starter spec from a template that trains as written.

Templates live in cnnkit/spec/templates/<name>.yaml (package data). The written file starts with a
`# yaml-language-server: $schema=...` line pointing at the schema of this checkout when there
is one (editors then complete and check keys), and `{file}` in a template's comments becomes
the path written, so the commands it shows can be copied as they are.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from cnnkit.errors import CnnkitError
from cnnkit.spec.schema import SCHEMA_FILE

TEMPLATES = ("mnist", "folder", "binary")


def template_text(template: str) -> str:
    if template not in TEMPLATES:
        raise CnnkitError(
            f"unknown template '{template}'", hint=f"Valid templates: {', '.join(TEMPLATES)}."
        )
    return resources.files("cnnkit.spec").joinpath("templates", f"{template}.yaml").read_text()


def schema_line(target: Path) -> str:
    """The yaml-language-server line for a spec written at `target`: the schema of this
    checkout, relative to the spec's folder; without a checkout, how to make one."""
    schema = Path(__file__).resolve().parents[2] / SCHEMA_FILE
    if not schema.is_file():
        return (
            "# Editor completion: `cnnkit schema --out cnnkit-spec.schema.json`, then start this\n"
            "# file with: # yaml-language-server: $schema=cnnkit-spec.schema.json\n"
        )
    try:
        relative = os.path.relpath(schema, target.resolve().parent)
    except ValueError:  # another drive (Windows)
        relative = str(schema)
    return f"# yaml-language-server: $schema={Path(relative).as_posix()}\n"


def write_starter(template: str, path: Path | None = None) -> Path:
    """Write the template to `path` (default <template>.yaml here); never overwrite a file."""
    text = template_text(template)
    target = Path(path) if path is not None else Path(f"{template}.yaml")
    if target.is_dir():
        target = target / f"{template}.yaml"
    if target.exists():
        raise CnnkitError(
            "already exists: cnnkit init never overwrites a file",
            where=str(target),
            hint="Give another path: cnnkit init --template "
            f"{template} my_{template}.yaml (or delete the file first).",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x") as handle:  # exclusive create: no race with another writer
            handle.write(schema_line(target) + text.replace("{file}", str(target)))
    except FileExistsError:
        raise CnnkitError(
            "already exists: cnnkit init never overwrites a file", where=str(target)
        ) from None
    except OSError as exc:
        raise CnnkitError(
            f"cannot write the spec: {exc.strerror or exc}", where=str(target)
        ) from None
    return target
