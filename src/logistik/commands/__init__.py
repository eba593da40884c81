"""The `logistik` command line: one module per command."""
