"""Metric engine: exact ranking metrics and the per-class / mean / pooled protocols."""
