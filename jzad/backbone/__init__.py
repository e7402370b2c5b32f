"""jzad.backbone."""
