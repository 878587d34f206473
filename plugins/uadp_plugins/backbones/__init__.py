"""Bundled backbones."""
