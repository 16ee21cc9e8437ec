"""The student as ONNX: user tower, item tower and prerank scorer on integer ids (tf2onnx), their inputs'
mapping from raw values (inputs.json), and an onnxruntime parity check."""
