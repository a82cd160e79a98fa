"""`python -m codexlm ...`: the `codexlm` command (codexlm.cli), without the console script."""

from codexlm.cli import main

main()
