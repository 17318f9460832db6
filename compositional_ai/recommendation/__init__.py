"""Service recommendations for repair customers."""
