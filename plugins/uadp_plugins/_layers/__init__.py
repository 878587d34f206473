"""Building blocks shared by the bundled models: attention with neighbour masks, dropout,
feature jitter, channel standardisation, Gaussian smoothing, SSIM, DCSA and MGG-CNN.

Private to the bundled plugins (it registers no component); its names may change."""
