"""``python -m convcli`` (used to run recipes in child processes)."""

from convcli.cli.app import main

main()
