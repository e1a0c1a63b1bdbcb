#include "common/huge_pages.h"

#include <cstdint>
#include <cstdlib>
#include <new>

#include "common/huge_page_buffer.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace aefast {
namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// Advises the whole 2 MiB pages inside [start, start + bytes); true when the kernel took it.
bool advise_range(void* start, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto first = reinterpret_cast<uintptr_t>(start);
  const uintptr_t begin = (first + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (first + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (end > begin) return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#else
  (void)start;
  (void)bytes;
#endif
  return false;
}

}  // namespace

bool advise_huge_pages(const pybind11::buffer& buffer) {
  pybind11::buffer_info info = buffer.request(true);
  return advise_range(info.ptr, static_cast<size_t>(info.size * info.itemsize));
}

void* allocate_scratch(size_t bytes) {
  bytes = bytes == 0 ? 1 : bytes;
  void* buffer = nullptr;
  if (bytes >= kHugePageBufferMinBytes) {
    // aligned_alloc wants a multiple of the alignment; the pages past `bytes` are never touched.
    buffer = std::aligned_alloc(kHugePage, (bytes + kHugePage - 1) & ~(kHugePage - 1));
    if (buffer != nullptr) advise_range(buffer, bytes);
  } else {
    buffer = std::malloc(bytes);
  }
  if (buffer == nullptr) throw std::bad_alloc();
  return buffer;
}

void FreeScratch::operator()(void* buffer) const { std::free(buffer); }

}  // namespace aefast
