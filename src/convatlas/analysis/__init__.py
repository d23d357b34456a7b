"""Analysis of any network: per-layer summary, MACs, receptive fields (analytic and empirical)."""
