"""Example third-party srpo plugins (see pyproject.toml for their entry points)."""
