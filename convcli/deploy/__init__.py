"""Deployment layouts built from a finished run: Triton model repositories (``triton.py``)."""
