// Scratch buffers of the CPU kernels, backed by 2 MiB pages where Linux grants them. A kernel that
// reads a large buffer at random pays a TLB miss on nearly every access with 4 KiB pages; a few dozen
// huge pages cover the whole buffer. Plain C++ (no Python), so the per-ISA kernel sources may use it.
#pragma once
#include <cstddef>
#include <memory>

namespace aefast {

// Buffers of at least this many bytes go on huge pages (as aefast._buffers.HUGE_PAGES_MIN_BYTES); a
// smaller one would only zero a whole 2 MiB page on its first touch.
constexpr size_t kHugePageBufferMinBytes = size_t{4} << 20;

// `bytes` bytes (at least 1), on huge pages when that large; throws std::bad_alloc when out of memory.
void* allocate_scratch(size_t bytes);
struct FreeScratch {
  void operator()(void* buffer) const;
};
template <typename T> using ScratchArray = std::unique_ptr<T[], FreeScratch>;

// An uninitialized array of `count` Ts.
template <typename T> ScratchArray<T> scratch_array(size_t count) {
  return ScratchArray<T>(static_cast<T*>(allocate_scratch(count * sizeof(T))));
}

}  // namespace aefast
