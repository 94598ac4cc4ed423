"""Runnable examples: ``.venv/bin/python -m examples.incident_demo`` / ``-m examples.shell_agent``
from the repository root (``-m`` puts the root, and so the SDK, on the import path)."""
