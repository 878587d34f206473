"""Building blocks shared by the bundled models (attention with neighbour masks, dropout)."""
