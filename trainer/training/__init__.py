"""Training: the model-directory layout, run records, optimizer routing, the distribution strategy, the loop,
and loading what training wrote."""
