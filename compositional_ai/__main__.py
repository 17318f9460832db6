"""`python -m compositional_ai` is the `compositional-ai` command."""

from compositional_ai.cli import main

main()
