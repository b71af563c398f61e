"""The Typer app and the rendering of results; no logic of its own (see cnnkit.api)."""
