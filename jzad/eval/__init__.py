"""jzad.eval."""
