// Advice to back a large buffer with transparent huge pages (Linux), before its first touch.
#pragma once
#include <pybind11/pybind11.h>

namespace aefast {

// True when the kernel took the advice for the buffer's whole 2 MiB pages; False elsewhere.
bool advise_huge_pages(const pybind11::buffer& buffer);

}  // namespace aefast
