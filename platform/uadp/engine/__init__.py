"""The engine: components, feature cache, training loop, checkpoints, inference and the run itself."""
