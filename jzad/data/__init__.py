"""jzad.data."""
