"""What the tests change in Triton's CPU interpreter, which runs the kernels on machines without a GPU.

- ``round_bfloat16_to_nearest``: the interpreter rounds float32 to bfloat16 toward zero
  (``tensor.to(tl.bfloat16)`` passes its conversion no rounding mode; triton 3.6 to 3.9), where the GPU
  rounds to nearest even, as torch does. A kernel's bfloat16 results then err up to twice as much in
  the interpreter as on the GPU, and a test that holds them to torch's error fails there alone. The
  patch rounds as the GPU does.
- ``reduce_bitwise_and_with_numpy``: ``tl.reduce`` with a combine function other than sum, min or max
  calls it in Python once per element (``ReduceOps.generic_reduce``). The Willshaw retrieval's AND of a
  cue's rows is such a reduce, and took about 90% of a retrieval's time in the interpreter (12 s of a
  40-cue hard-threshold call). The patch reduces aefast's bitwise AND with NumPy's, the same result.

Neither changes what a kernel computes on a GPU; tests/test_interpreter_patches.py holds each to its
reference."""
import numpy as np


def _to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bits of float32 ``values``, rounded to nearest even (NaN stays NaN, quieted)."""
    bits = np.frombuffer(np.ascontiguousarray(values, dtype=np.float32).tobytes(), dtype=np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = np.where((bits & 0x7FFFFFFF) > 0x7F800000, (bits >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16).reshape(np.shape(values))


def round_bfloat16_to_nearest() -> None:
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float
    if getattr(original, "rounds_bfloat16_to_nearest", False):
        return

    def convert(values, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            return _to_bfloat16_bits(values)
        return original(values, input_dtype, output_dtype, rounding_mode)
    convert.rounds_bfloat16_to_nearest = True
    interpreter._convert_float = convert


def reduce_bitwise_and_with_numpy() -> None:
    from triton.runtime import interpreter

    from aefast.willshaw.triton_kernels import _bit_and

    original = interpreter.ReduceOps.apply_impl
    if getattr(original, "reduces_bitwise_and_with_numpy", False):
        return

    def apply_impl(self, input):
        if self.combine_fn is _bit_and:
            (tensor,) = input
            return self.to_tensor(np.bitwise_and.reduce(tensor.handle.data, axis=self.axis, keepdims=self.keep_dims),
                                  tensor.dtype)
        return original(self, input)
    apply_impl.reduces_bitwise_and_with_numpy = True
    interpreter.ReduceOps.apply_impl = apply_impl
