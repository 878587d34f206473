"""Data: the sample record, image decoding, transforms and loaders (datasets themselves are plugins)."""
