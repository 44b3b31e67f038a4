"""Training a network from sparse annotations with the patch pipeline."""
