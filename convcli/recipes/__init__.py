"""The job/recipe schema shared by the CLI and YAML recipes, so the two cannot drift."""
