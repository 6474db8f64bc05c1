"""Compiled kernels; empty here, so that importing every core module (plugin discovery does) imports no Numba."""
