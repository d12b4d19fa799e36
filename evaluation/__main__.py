"""`python -m evaluation` = `phaseforge-eval`."""
from evaluation.cli import main

main()
