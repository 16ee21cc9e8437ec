"""Item vectors per model version: a versioned, resumable file store (`reader`, `writer`, `values`, no
TensorFlow) and `embed`, which fills it through an export's item_embedding signature."""
