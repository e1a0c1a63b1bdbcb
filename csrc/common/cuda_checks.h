// Checks on what Python passes to the CUDA entry points: errors of the runtime as Python exceptions,
// and device pointers that are at least device memory (raw addresses carry no sizes: the entry points
// take the sizes as arguments, and their kernels clamp every index read from memory to them).
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace aefast {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

// nullptr for address 0; otherwise the address, refused unless it is device memory.
template <typename P> P* device_pointer(uintptr_t address, const char* name) {
  if (address == 0) return nullptr;
  cudaPointerAttributes attributes;
  check_cuda(cudaPointerGetAttributes(&attributes, reinterpret_cast<void*>(address)), name);
  if (attributes.type != cudaMemoryTypeDevice) {
    throw pybind11::value_error(std::string(name) + ": expected a CUDA device pointer");
  }
  return reinterpret_cast<P*>(address);
}

// device_pointer that also refuses 0.
template <typename P> P* required_device_pointer(uintptr_t address, const char* name) {
  P* pointer = device_pointer<P>(address, name);
  if (pointer == nullptr) throw pybind11::value_error(std::string(name) + " must be non-null");
  return pointer;
}

}  // namespace aefast
