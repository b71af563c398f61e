"""The run directory: file names, checkpoints, run state, report, catalog and compare,
evaluation files and plots."""
