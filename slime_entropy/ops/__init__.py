"""Kernels with communication: fused vocab-parallel log-prob + entropy, and exact distributed top-rho selection."""
