"""prerank serving: pruning, SavedModel export, TF Serving config, ONNX, item vectors."""
import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
