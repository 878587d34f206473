"""Bundled reconstructors."""
