"""`python -m logistik`."""

from logistik.commands.cli import main

main()
