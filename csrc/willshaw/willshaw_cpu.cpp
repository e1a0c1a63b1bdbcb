// Python entry points of the CPU Willshaw kernels: check every buffer and pattern index (so no call
// from Python reads or writes out of bounds), release the GIL, and run the copy of the kernels built
// for the best instruction set this CPU has.
#include "willshaw/willshaw.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/isa.h"

namespace aefast {
namespace {

WillshawMatrix checked_matrix(const py::buffer& matrix, int64_t n_in, int64_t n_out, bool writable) {
  // At most 2^31 - 1 units per side: sums are int32, and the store keeps answer units in 32 bits.
  constexpr int64_t kMaxUnits = std::numeric_limits<int32_t>::max();
  if (n_in < 1 || n_out < 1 || n_in > kMaxUnits || n_out > kMaxUnits) {
    throw py::value_error("n_in and n_out must be in [1, 2^31 - 1], got " + std::to_string(n_in) + " and " +
                          std::to_string(n_out));
  }
  const int64_t words = words_per_row(n_out);
  auto* data = static_cast<uint64_t*>(checked_buffer(matrix, "matrix", n_in * words, sizeof(uint64_t), writable));
  return WillshawMatrix{data, n_in, n_out, words};
}

// The first problem found in a batch of pattern rows, reported once the GIL is held again (nothing
// inside the parallel loop allocates, so nothing there can throw).
struct RowProblem {
  enum Kind { none, out_of_range, listed_twice } kind = none;
  int64_t row = std::numeric_limits<int64_t>::max();
  int64_t value = 0;
};

// Offsets that start at 0, never decrease and end at the number of values; every value in [0, units);
// and, when asked, no row that lists a unit twice.
PatternRows checked_rows(const py::buffer& values, const py::buffer& offsets, int64_t rows, int64_t units,
                         const std::string& name, bool check_duplicates) {
  check_nonnegative(rows, "rows");
  if (rows == std::numeric_limits<int64_t>::max()) throw py::value_error("rows must be < 2^63 - 1");
  py::buffer_info values_info = values.request();
  const auto* offsets_p =
      static_cast<const int64_t*>(checked_buffer(offsets, (name + " offsets").c_str(), rows + 1, 8, false));
  const auto* values_p = static_cast<const int64_t*>(
      checked_buffer(values, (name + " values").c_str(), values_info.size, 8, false));
  if (offsets_p[0] != 0 || offsets_p[rows] != values_info.size) {
    throw py::value_error(name + ": offsets must run from 0 to the number of values (" +
                          std::to_string(values_info.size) + ")");
  }
  for (int64_t b = 0; b < rows; ++b) {
    if (offsets_p[b + 1] < offsets_p[b]) throw py::value_error(name + ": offsets must not decrease");
  }
  RowProblem problem;
  {
    const int64_t words = words_per_row(units);
    std::vector<std::vector<uint64_t>> seen(check_duplicates ? omp_get_max_threads() : 0);
    for (auto& bits : seen) bits.assign(static_cast<size_t>(words), 0);
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 256)
    for (int64_t b = 0; b < rows; ++b) {
      RowProblem found;
      for (int64_t e = offsets_p[b]; e < offsets_p[b + 1]; ++e) {
        if (values_p[e] < 0 || values_p[e] >= units) {
          found = RowProblem{RowProblem::out_of_range, b, values_p[e]};
          break;
        }
      }
      if (found.kind == RowProblem::none && check_duplicates) {
        std::vector<uint64_t>& bits = seen[omp_get_thread_num()];
        for (int64_t e = offsets_p[b]; e < offsets_p[b + 1]; ++e) {
          const int64_t v = values_p[e];
          const uint64_t bit = uint64_t{1} << (v & 63);
          if ((bits[v >> 6] & bit) && found.kind == RowProblem::none) found = RowProblem{RowProblem::listed_twice, b, v};
          bits[v >> 6] |= bit;
        }
        for (int64_t e = offsets_p[b]; e < offsets_p[b + 1]; ++e) bits[values_p[e] >> 6] = 0;
      }
      if (found.kind != RowProblem::none) {
#pragma omp critical(aefast_willshaw_row_problem)
        if (found.row < problem.row) problem = found;
      }
    }
  }
  if (problem.kind == RowProblem::out_of_range) {
    throw py::value_error(name + ": row " + std::to_string(problem.row) + ": index " + std::to_string(problem.value) +
                          " is outside [0, " + std::to_string(units) + ")");
  }
  if (problem.kind == RowProblem::listed_twice) {
    throw py::value_error(name + ": row " + std::to_string(problem.row) + " lists index " +
                          std::to_string(problem.value) + " more than once");
  }
  return PatternRows{values_p, offsets_p, rows};
}

}  // namespace

void willshaw_check_patterns(const py::buffer& values, const py::buffer& offsets, int64_t rows, int64_t units,
                             const std::string& name) {
  checked_rows(values, offsets, rows, units, name, true);
}

void willshaw_store_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& x_values,
                        const py::buffer& x_offsets, const py::buffer& y_values, const py::buffer& y_offsets,
                        int64_t rows) {
  const WillshawMatrix m = checked_matrix(matrix, n_in, n_out, true);
  const PatternRows x = checked_rows(x_values, x_offsets, rows, n_in, "x", false);
  const PatternRows y = checked_rows(y_values, y_offsets, rows, n_out, "y", false);
  py::gil_scoped_release release;
  by_isa(generic::willshaw_store, avx2::willshaw_store, avx512::willshaw_store)(m, x, y);
}

void willshaw_sums_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& cue_values,
                       const py::buffer& cue_offsets, int64_t rows, const py::buffer& sums) {
  const WillshawMatrix m = checked_matrix(matrix, n_in, n_out, false);
  const PatternRows cue = checked_rows(cue_values, cue_offsets, rows, n_in, "cue", false);
  const int64_t sums_count = checked_product(rows, n_out, "rows x n_out");
  auto* sums_p = static_cast<int32_t*>(checked_buffer(sums, "sums", sums_count, sizeof(int32_t), true));
  py::gil_scoped_release release;
  by_isa(generic::willshaw_sums, avx2::willshaw_sums, avx512::willshaw_sums)(m, cue, sums_p);
}

namespace {

// Queries answered per pass: their answer bits (256 x 8 KiB at n = 2^16) stay in cache between the
// kernel that writes them and the pass that turns them into the caller's form.
constexpr int64_t kQueryBlock = 256;

struct RetrieveRequest {
  WillshawMatrix matrix;
  PatternRows cue;
  Threshold threshold;
  int64_t value;
};

RetrieveRequest checked_request(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& cue_values,
                                const py::buffer& cue_offsets, int64_t rows, int threshold, int64_t value) {
  const WillshawMatrix m = checked_matrix(matrix, n_in, n_out, false);
  const PatternRows cue = checked_rows(cue_values, cue_offsets, rows, n_in, "cue", false);
  if (threshold < static_cast<int>(Threshold::hard) || threshold > static_cast<int>(Threshold::topk)) {
    throw py::value_error("threshold must be 0 (hard), 1 (soft), 2 (fixed) or 3 (topk), got " + std::to_string(threshold));
  }
  const auto mode = static_cast<Threshold>(threshold);
  if (mode == Threshold::fixed && value < 0) throw py::value_error("a fixed threshold must be >= 0");
  if (mode == Threshold::topk && (value < 1 || value > n_out)) {
    throw py::value_error("k must be in [1, n_out=" + std::to_string(n_out) + "], got " + std::to_string(value));
  }
  return RetrieveRequest{m, cue, mode, value};
}

decltype(&generic::willshaw_retrieve) retrieve_kernel() {
  return by_isa(generic::willshaw_retrieve, avx2::willshaw_retrieve, avx512::willshaw_retrieve);
}

}  // namespace

void willshaw_retrieve_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& cue_values,
                           const py::buffer& cue_offsets, int64_t rows, int threshold, int64_t value,
                           const py::buffer& answer) {
  const RetrieveRequest r = checked_request(matrix, n_in, n_out, cue_values, cue_offsets, rows, threshold, value);
  const int64_t answer_count = checked_product(rows, n_out, "rows x n_out");
  auto* answer_p = static_cast<uint8_t*>(checked_buffer(answer, "answer", answer_count, 1, true));
  std::vector<uint64_t> bits(static_cast<size_t>(std::min(rows, kQueryBlock) * r.matrix.words_per_row));
  py::gil_scoped_release release;
  for (int64_t b0 = 0; b0 < rows; b0 += kQueryBlock) {
    const PatternRows block{r.cue.values, r.cue.offsets + b0, std::min(kQueryBlock, rows - b0)};
    retrieve_kernel()(r.matrix, block, r.threshold, r.value, bits.data(), answer_p + b0 * n_out, nullptr);
  }
}

py::tuple willshaw_retrieve_indices_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out,
                                        const py::buffer& cue_values, const py::buffer& cue_offsets, int64_t rows,
                                        int threshold, int64_t value) {
  const RetrieveRequest r = checked_request(matrix, n_in, n_out, cue_values, cue_offsets, rows, threshold, value);
  const int64_t words = r.matrix.words_per_row;
  py::array_t<int64_t> offsets(rows + 1);
  int64_t* offsets_p = offsets.mutable_data();
  offsets_p[0] = 0;
  std::vector<int64_t> values;
  {
    std::vector<uint64_t> bits(static_cast<size_t>(std::min(rows, kQueryBlock) * words));
    py::gil_scoped_release release;
    for (int64_t b0 = 0; b0 < rows; b0 += kQueryBlock) {
      const int64_t count = std::min(kQueryBlock, rows - b0);
      const PatternRows block{r.cue.values, r.cue.offsets + b0, count};
      retrieve_kernel()(r.matrix, block, r.threshold, r.value, bits.data(), nullptr, offsets_p + b0 + 1);
      for (int64_t b = b0; b < b0 + count; ++b) offsets_p[b + 1] += offsets_p[b];
      values.resize(static_cast<size_t>(offsets_p[b0 + count]));
#pragma omp parallel for schedule(dynamic, 16)
      for (int64_t b = 0; b < count; ++b) {
        int64_t* out = values.data() + offsets_p[b0 + b];
        for (int64_t w = 0; w < words; ++w) {
          for (uint64_t word = bits[b * words + w]; word != 0; word &= word - 1) *out++ = w * 64 + __builtin_ctzll(word);
        }
      }
    }
  }
  py::array_t<int64_t> values_array(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), values_array.mutable_data());
  return py::make_tuple(values_array, offsets);
}

py::tuple willshaw_dense_to_rows(const py::buffer& dense, int64_t rows, int64_t width) {
  // The buffer's own shape, not only its size: with width 0 any rows would match an empty buffer, and
  // the offsets (rows + 1 of them) are allocated from it.
  const py::buffer_info info = dense.request();
  if (info.ndim != 2 || info.shape[0] != rows || info.shape[1] != width) {
    throw py::value_error("dense must be a 2-D buffer of shape (rows=" + std::to_string(rows) + ", width=" +
                          std::to_string(width) + ")");
  }
  const int64_t dense_count = checked_product(rows, width, "rows x width");
  const auto* dense_p = static_cast<const uint8_t*>(checked_buffer(dense, "dense", dense_count, 1, false));
  py::array_t<int64_t> offsets(rows + 1);
  int64_t* offsets_p = offsets.mutable_data();
  offsets_p[0] = 0;
  // Patterns are sparse: test eight bytes at a time and look closer only at words that hold a one.
  auto for_each_one = [&](int64_t b, auto&& visit) {
    const uint8_t* row = dense_p + b * width;
    int64_t i = 0;
    for (; i + 8 <= width; i += 8) {
      uint64_t word;
      std::memcpy(&word, row + i, sizeof(word));
      if (word == 0) continue;
      for (int64_t k = i; k < i + 8; ++k) if (row[k]) visit(k);
    }
    for (; i < width; ++i) if (row[i]) visit(i);
  };
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t b = 0; b < rows; ++b) {
      int64_t count = 0;
      for_each_one(b, [&](int64_t) { ++count; });
      offsets_p[b + 1] = count;
    }
    for (int64_t b = 0; b < rows; ++b) offsets_p[b + 1] += offsets_p[b];
  }
  py::array_t<int64_t> values(static_cast<py::ssize_t>(offsets_p[rows]));
  int64_t* values_p = values.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t b = 0; b < rows; ++b) {
      int64_t* out = values_p + offsets_p[b];
      for_each_one(b, [&](int64_t i) { *out++ = i; });
    }
  }
  return py::make_tuple(values, offsets);
}

uint64_t willshaw_count_ones_cpu(const py::buffer& matrix, int64_t count) {
  check_nonnegative(count, "count");
  const auto* words = static_cast<const uint64_t*>(checked_buffer(matrix, "matrix", count, sizeof(uint64_t), false));
  py::gil_scoped_release release;
  return by_isa(generic::count_ones, avx2::count_ones, avx512::count_ones)(words, count);
}

}  // namespace aefast
