"""Source loaders: one module per family of sources."""
