"""Fitted preprocessing: vocabularies and normalisation statistics learned from training data
(`analyze`), saved beside the model (`fitted.Preprocessing`), and the numeric transform steps (`numeric`)."""
