"""jzad.methods."""
