#include "common/huge_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace aefast {

bool advise_huge_pages(const pybind11::buffer& buffer) {
  pybind11::buffer_info info = buffer.request(true);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const auto start = reinterpret_cast<uintptr_t>(info.ptr);
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + static_cast<uintptr_t>(info.size * info.itemsize)) & ~(kHugePage - 1);
  if (end > begin) return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0;
#endif
  return false;
}

}  // namespace aefast
