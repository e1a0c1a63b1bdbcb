"""Triton's CPU interpreter rounds float32 to bfloat16 toward zero (``tensor.to(tl.bfloat16)`` passes
its conversion no rounding mode; triton 3.6 to 3.9), where the GPU rounds to nearest even, as torch
does. A kernel's bfloat16 results then err up to twice as much in the interpreter as on the GPU, and a
test that holds them to torch's error fails there alone. ``round_bfloat16_to_nearest`` patches the
interpreter's conversion for the tests so that it rounds as the GPU does."""
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
