"""Input data, output comparison, accuracy and latency: everything that proves an artifact."""
