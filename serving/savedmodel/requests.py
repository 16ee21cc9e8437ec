"""Calling a loaded signature from Python: the inputs checked against the signature first, the refusals of
its in-graph checks (`input_checks`) turned into errors.

A loaded signature called directly with a wrong dtype or shape raises TensorFlow's TypeError / ValueError
about "binding inputs", which does not say which input is wrong; `check_inputs` names every unknown,
missing or mistyped input with the dtype and shape expected and given. Nothing is converted: an int32 array
for an int64 input, or float64 for float32, is refused as TF Serving refuses it ("Expects arg[i] to be int64
but int32 is provided"). Strings may be numpy unicode, bytes or object arrays.

Every place prerank calls a loaded signature goes through here (verify-export, embed-items, the serving
benchmark), and so will a scoring service.
"""
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.errors import DataError

_STRING_KINDS = "USO"  # numpy unicode, bytes, object


def _shape(shape: tf.TensorShape | tuple) -> str:
    dims = shape.as_list() if isinstance(shape, tf.TensorShape) else list(shape)
    return "[" + ", ".join("B" if i == 0 and d is None else ("L" if d is None else str(d))
                           for i, d in enumerate(dims)) + "]"


def _given(value: Any) -> tuple[str, tuple, Any]:
    """(dtype name, shape, value as a tensor-ready array or tensor) of one input as given."""
    if isinstance(value, tf.Tensor):
        return value.dtype.name, tuple(value.shape.as_list()), value
    array = np.asarray(value)
    if array.dtype.kind in _STRING_KINDS:
        return "string", array.shape, array
    return array.dtype.name, array.shape, array


def _problem(name: str, spec: tf.TensorSpec, value: Any) -> str | None:
    if isinstance(value, tf.RaggedTensor):
        return f"input '{name}': expected a dense {spec.dtype.name} {_shape(spec.shape)} (sequences right-padded), " \
               "got a RaggedTensor"
    dtype, shape, _ = _given(value)
    want = f"{spec.dtype.name} {_shape(spec.shape)}"
    if dtype != spec.dtype.name or not spec.shape.is_compatible_with(shape):
        return f"input '{name}': expected {want}, got {dtype} {_shape(shape)}"
    return None


def check_inputs(signature_fn, inputs: Mapping[str, Any], where: str) -> dict[str, tf.Tensor]:
    """`inputs` as tensors for `signature_fn` (a loaded or traced ConcreteFunction), once every input name,
    dtype and shape matches its signature; a DataError naming every input that does not, otherwise.

    Args:
      signature_fn: e.g. `tf.saved_model.load(path).signatures["prerank"]`.
      inputs: input name -> numpy array or tf.Tensor.
      where: what the request is, for the message ("warmup request 3 of /models/prerank/1").
    """
    specs = signature_fn.structured_input_signature[1]
    problems = []
    unknown = sorted(set(inputs) - set(specs))
    missing = sorted(set(specs) - set(inputs))
    if unknown:
        problems.append(f"unknown input(s) {', '.join(unknown)}")
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    for name in sorted(set(specs) & set(inputs)):
        problem = _problem(name, specs[name], inputs[name])
        if problem:
            problems.append(problem)
    if problems:
        takes = ", ".join(f"{n} {s.dtype.name} {_shape(s.shape)}" for n, s in sorted(specs.items()))
        takes = f" (the signature takes: {takes})" if unknown or missing else ""
        raise DataError(f"{where}: {'; '.join(problems)}{takes}")
    tensors = {}
    for name, value in inputs.items():
        try:
            tensors[name] = tf.convert_to_tensor(_given(value)[2], dtype=specs[name].dtype)
        except (TypeError, ValueError) as e:  # e.g. an object array holding something else than strings
            raise DataError(f"{where}: input '{name}': not convertible to {specs[name].dtype.name}: {e}") from None
    return tensors


def refusal(error: tf.errors.OpError) -> str:
    """What a signature's failed check says (the assertion text, without TensorFlow's node and op lines)."""
    message = error.message or ""
    start = message.find("assertion failed: [")
    if start < 0:
        return message.strip().splitlines()[0] if message.strip() else type(error).__name__
    text = message[start + len("assertion failed: ["):]
    return text.split("]\n", 1)[0].strip()


def call_signature(signature_fn, inputs: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """The outputs of `signature_fn` on `inputs` (checked by `check_inputs`); a DataError with the
    signature's own message if its in-graph checks refuse the request."""
    tensors = check_inputs(signature_fn, inputs, where)
    try:
        outputs = signature_fn(**tensors)
    except tf.errors.InvalidArgumentError as e:
        raise DataError(f"{where}: refused: {refusal(e)}") from None
    return {k: v.numpy() for k, v in outputs.items()}
