"""The SavedModel for TF Serving: pruning, signatures on raw features, warmup requests, the versioned export
and its verification."""
