"""convcli: convert trained models into checked deployment artifacts."""

__version__ = "0.1.0"
