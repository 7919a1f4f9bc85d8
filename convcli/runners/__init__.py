"""Runners: one module per runtime that executes artifacts."""
