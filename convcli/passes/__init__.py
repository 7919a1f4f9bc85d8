"""Passes: one module per same-format transform."""
