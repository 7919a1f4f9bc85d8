"""Converters: one module per edge of the format graph."""
