// Checks on what Python passes to the C++ entry points. The Python layer validates first and names
// the user's argument; these run again so that no call from Python can read or write out of bounds.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtypes.h"

namespace aefast {

namespace py = pybind11;

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  if (name == "float16") return DType::f16;
  if (name == "bfloat16") return DType::bf16;
  throw py::type_error("dtype must be float32, float64, float16 or bfloat16, got " + name);
}

inline py::ssize_t itemsize(DType dtype) {
  switch (dtype) {
    case DType::f64: return 8;
    case DType::f32: return 4;
    default: return 2;
  }
}

// A C-contiguous buffer of exactly `count` items of `item_bytes` bytes; writable when asked.
inline void* checked_buffer(const py::buffer& buffer, const char* name, py::ssize_t count,
                            py::ssize_t item_bytes, bool writable) {
  py::buffer_info info = buffer.request(writable);
  if (info.itemsize != item_bytes) {
    throw py::type_error(std::string(name) + ": expected items of " + std::to_string(item_bytes) +
                         " bytes, got " + std::to_string(info.itemsize));
  }
  if (info.size != count) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(count) +
                          " elements, got " + std::to_string(info.size));
  }
  py::ssize_t expected_stride = item_bytes;
  for (py::ssize_t dim = info.ndim - 1; dim >= 0; --dim) {
    if (info.shape[dim] != 1 && info.strides[dim] != expected_stride) {
      throw py::value_error(std::string(name) + ": buffer must be C-contiguous");
    }
    expected_stride *= info.shape[dim];
  }
  return info.ptr;
}

inline void check_nonnegative(int64_t value, const char* name) {
  if (value < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(value));
}

// a * b for sizes a, b >= 0, refused where it would overflow: a wrapped product could match a small
// buffer and let the kernel run over memory it does not own.
inline int64_t checked_product(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &product)) {
    throw py::value_error(std::string(what) + " (" + std::to_string(a) + " x " + std::to_string(b) +
                          ") must be a size >= 0 that fits in 64 bits");
  }
  return product;
}

inline void check_positive(int64_t value, const char* name) {
  if (value < 1) throw py::value_error(std::string(name) + " must be >= 1, got " + std::to_string(value));
}

}  // namespace aefast
