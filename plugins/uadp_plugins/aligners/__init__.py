"""Bundled aligners."""
