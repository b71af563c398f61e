"""`cnnkit init`: write a commented starter spec from a template that trains as written.

Templates live in cnnkit/spec/templates/<name>.yaml (package data). The written file starts with a
`# yaml-language-server: $schema=...` line pointing at the schema, which ships in the package
(editors then complete and check keys), and `{file}` in a template's comments becomes
the path written, so the commands it shows can be copied as they are.
"""

from __future__ import annotations

import contextlib
import os
from importlib import resources
from pathlib import Path

from cnnkit.errors import CnnkitError
from cnnkit.places import source_checkout
from cnnkit.spec.schema import SCHEMA_FILE

TEMPLATES = ("mnist", "folder", "binary")


def template_text(template: str) -> str:
    if template not in TEMPLATES:
        raise CnnkitError(
            f"unknown template '{template}'", hint=f"Valid templates: {', '.join(TEMPLATES)}."
        )
    return resources.files("cnnkit.spec").joinpath("templates", f"{template}.yaml").read_text()


def schema_line(target: Path) -> str:
    """The yaml-language-server line for a spec written at `target`, pointing at the schema that
    ships in the package: relative to the spec's folder in a source checkout (specs move with
    the repository), absolute when cnnkit is installed (the spec is the user's, anywhere)."""
    schema = str(SCHEMA_FILE)
    if source_checkout() is not None:
        with contextlib.suppress(ValueError):  # another drive (Windows): absolute
            schema = os.path.relpath(SCHEMA_FILE, target.resolve().parent)
    return f"# yaml-language-server: $schema={Path(schema).as_posix()}\n"


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
