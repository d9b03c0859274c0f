"""`python -m mlp` is the `mlp` command line."""

from mlp.cli import main

main()
