"""jzad: training-free industrial anomaly detection in JAX.

Importing the package is light: it pulls in jax and nothing heavier (no torch, no transformers).
"""

__version__ = "0.1.0"
