"""The spec: YAML loading with positions, validation, --set overrides, the JSON Schema,
starter specs. Imports nn and data, never runs/train/cli."""
