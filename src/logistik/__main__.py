"""`python -m logistik`."""

from logistik.cli import main

main()
