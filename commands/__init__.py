"""The command line, one module per group of commands: `convert` (the run itself, the
main command), `artifacts` (verify-artifact, publish, predict, keygen), `tools` (bench,
lock-checkpoints, localize, add, list-models). pipeline.py puts them together."""
