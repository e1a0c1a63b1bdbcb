// The bit-packed Willshaw memory: its layout, the CPU kernels (one copy per instruction set) and the
// entry points bound into Python.
//
// Layout: the transpose of the weight matrix, one bit-row of n_out output units per input unit j, in
// `words` = ceil(n_out / 64) 64-bit words; bit i of row j is w_ij. A cue with M ones reads M rows.
// Bits past n_out stay zero, so every kernel may count whole words.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/isa.h"

namespace aefast {

// A batch of patterns as the active positions of each row: row b holds values[offsets[b]:offsets[b+1]].
struct PatternRows {
  const int64_t* values;
  const int64_t* offsets;
  int64_t rows;
  int64_t count(int64_t row) const { return offsets[row + 1] - offsets[row]; }
  const int64_t* begin(int64_t row) const { return values + offsets[row]; }
};

// Words of a bit-row of n_out units.
inline int64_t words_per_row(int64_t n_out) { return (n_out + 63) / 64; }

struct WillshawMatrix {
  uint64_t* words;  // n_in x words_per_row
  int64_t n_in, n_out, words_per_row;
  const uint64_t* row(int64_t input_unit) const { return words + input_unit * words_per_row; }
};

// How a retrieval sets its threshold T (an output unit fires when its dendritic sum is >= T).
enum class Threshold : int {
  hard = 0,   // T = the number of ones in the cue; an empty cue retrieves nothing
  soft = 1,   // T = the largest sum of the cue; nothing when that is 0
  fixed = 2,  // T = value (>= 0)
  topk = 3,   // the `value` largest sums, ties to the lower index
};

#define AEFAST_DECLARE_WILLSHAW_KERNELS(isa)                                                          \
  namespace isa {                                                                                     \
  void willshaw_store(const WillshawMatrix& matrix, const PatternRows& x, const PatternRows& y);       \
  void willshaw_sums(const WillshawMatrix& matrix, const PatternRows& cue, int32_t* sums);             \
  void willshaw_retrieve(const WillshawMatrix& matrix, const PatternRows& cue, Threshold threshold,    \
                         int64_t value, uint64_t* answer_bits, uint8_t* answer_bool,                  \
                         int64_t* answer_counts);                                                     \
  uint64_t count_ones(const uint64_t* words, int64_t count);                                          \
  }
AEFAST_DECLARE_WILLSHAW_KERNELS(generic)
AEFAST_DECLARE_WILLSHAW_KERNELS(avx2)
AEFAST_DECLARE_WILLSHAW_KERNELS(avx512)
#undef AEFAST_DECLARE_WILLSHAW_KERNELS

namespace py = pybind11;

void willshaw_check_patterns(const py::buffer& values, const py::buffer& offsets, int64_t rows, int64_t units,
                             const std::string& name);
void willshaw_store_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& x_values,
                        const py::buffer& x_offsets, const py::buffer& y_values, const py::buffer& y_offsets,
                        int64_t rows);
void willshaw_sums_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& cue_values,
                       const py::buffer& cue_offsets, int64_t rows, const py::buffer& sums);
void willshaw_retrieve_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out, const py::buffer& cue_values,
                           const py::buffer& cue_offsets, int64_t rows, int threshold, int64_t value,
                           const py::buffer& answer);
py::tuple willshaw_retrieve_indices_cpu(const py::buffer& matrix, int64_t n_in, int64_t n_out,
                                        const py::buffer& cue_values, const py::buffer& cue_offsets, int64_t rows,
                                        int threshold, int64_t value);
py::tuple willshaw_dense_to_rows(const py::buffer& dense, int64_t rows, int64_t width);
uint64_t willshaw_count_ones_cpu(const py::buffer& matrix, int64_t count);

// Words per count of an answer's ones in the CUDA AND (aefast/willshaw/packed_retrieval.py's ANSWER_GROUP,
// held equal by a test).
constexpr int64_t kAnswerGroupWords = 128;

#ifdef AEFAST_WITH_CUDA
// CUDA entry points (willshaw_cuda.cu): device pointers, the sizes behind them, and the stream to launch
// on. The matrix has n_in rows of ceil(n_out / 64) words; patterns are (values, offsets) as above, with
// `*_count` values; the AND's words and counts are (cues, words per row) and (cues, ceil(words / 128)).
void willshaw_store_cuda(uintptr_t matrix, int64_t n_in, int64_t n_out, uintptr_t x_values, int64_t x_count,
                         uintptr_t x_offsets, uintptr_t y_values, int64_t y_count, uintptr_t y_offsets, int64_t pairs,
                         uintptr_t stream);
void willshaw_and_cuda(uintptr_t matrix, int64_t n_in, int64_t words_per_row, uintptr_t cue_values,
                       int64_t value_count, uintptr_t cue_offsets, int64_t cues, uintptr_t words, uintptr_t counts,
                       uintptr_t stream);
void willshaw_extract_cuda(uintptr_t words, int64_t cues, int64_t words_per_row, uintptr_t counts,
                           uintptr_t ends, uintptr_t out, int64_t total, uintptr_t stream);
void willshaw_sums_cuda(uintptr_t matrix, int64_t n_in, int64_t n_out, uintptr_t cue_values, int64_t value_count,
                        uintptr_t cue_offsets, int64_t cues, uintptr_t out, int64_t at_least, uintptr_t stream);
void willshaw_unpack_cuda(uintptr_t words, uintptr_t counts, int64_t rows, int64_t n_out, uintptr_t out,
                          uintptr_t stream);
void willshaw_count_ones_cuda(uintptr_t words, int64_t count, uintptr_t total, uintptr_t stream);
#endif

}  // namespace aefast
