"""The typer app: one module per command; commands stay thin and call the library."""
