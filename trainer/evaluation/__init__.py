"""Evaluation: offline metrics (AUC, GAUC, consistency), predictions of a model over data, the evaluation of a
trained model, and the report's plots."""
