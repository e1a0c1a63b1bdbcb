#pragma once
#include <pybind11/pybind11.h>

namespace aefast {
// What this CPU offers and what the build includes, for `aefast info` and the backend registry.
pybind11::dict cpu_features();
pybind11::dict build_info();
}  // namespace aefast
