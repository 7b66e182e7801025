"""Per-example DP-SGD: per-example gradients, clipping, noise, Poisson sampling, accounting."""
