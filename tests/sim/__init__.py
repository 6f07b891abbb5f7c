"""Deterministic simulation of dtlsvpn's sans-I/O core: fake clock, lossy links, a driver."""
