// The Willshaw memory's CUDA kernels, on the layout of willshaw.h (one bit-row of n_out output units per
// input unit, `words_per_row` 64-bit words each) and patterns as rows of positions (values, offsets).
//
// - store: one warp per pair; its lanes take the pair's (x one, y one) combinations and OR each bit
//   into the matrix with a relaxed atomic, so pairs that share a word need no other coordination.
// - AND (hard and soft thresholds): one block per (cue, group of kGroupWords words), a word per
//   thread, kRowsInFlight rows' loads issued before any is used; the block counts the answer's ones
//   in its group, which is what lets the extraction skip empty groups and place each group's positions.
// - sums (fixed and top-k thresholds, the soft fallback): a thread per output unit, adding the unit's
//   bit of each cue row, kRowsInFlight rows at a time (the 64 threads of a word read it through L1).
//
// Guards: the Python layer checks the patterns, but on the device that verdict can arrive after the
// kernels ran (retrieve_indices waits once, for the verdict and the answer's size together). So every
// kernel clamps offsets to [0, values], skips positions outside the matrix, and never writes outside
// its outputs, whatever the patterns hold.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/cuda_checks.h"
#include "willshaw/willshaw.h"

namespace aefast {
namespace {

using Word = unsigned long long;

constexpr int kStoreWarps = 8;      // pairs per block of the store
constexpr int kGroupWords = kAnswerGroupWords;  // words per AND block and per count of ones
constexpr int kRowsInFlight = 16;   // cue rows loaded at once by the AND (a pattern's ones; longer loop)
constexpr int kUnitThreads = 256;   // units per block of the sums and the unpacking
constexpr int kCountThreads = 256;  // words per block-stride of the count of ones
constexpr int64_t kGridYLimit = 65535;  // CUDA's limit on a grid's second axis: longer rows loop

// offsets[i] clamped to [low, count]: a bad offset reads nothing outside the values.
__device__ __forceinline__ int64_t clamped_offset(const int64_t* offsets, int64_t i, int64_t low, int64_t count) {
  return min(max(offsets[i], low), count);
}

// Word `word` of each row of the cue tile values[tile:min(tile + kRowsInFlight, stop)], or `missing`
// past the tile, for rows outside the matrix and when `inside` is false. All of the tile's loads are in
// flight before any is used: lane r of each warp loads row r's position and the warp shares them, so
// the loads wait on a shuffle, not on a global load each. Every lane of the warp must call it.
__device__ __forceinline__ void load_tile_words(const Word* matrix, int64_t n_in, int64_t words_per_row,
                                                const int64_t* cue_values, int64_t tile, int64_t stop, int64_t word,
                                                bool inside, Word missing, Word (&loaded)[kRowsInFlight]) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = lane < kRowsInFlight && tile + lane < stop ? cue_values[tile + lane] : -1;
#pragma unroll
  for (int r = 0; r < kRowsInFlight; ++r) {
    const int64_t row = __shfl_sync(0xffffffffu, rows, r);
    const bool valid = inside && row >= 0 && row < n_in;
    loaded[r] = valid ? __ldg(matrix + row * words_per_row + word) : missing;
  }
}

__global__ void store_kernel(Word* matrix, int64_t n_in, int64_t n_out, int64_t words_per_row,
                             const int64_t* x_values, int64_t x_count, const int64_t* x_offsets,
                             const int64_t* y_values, int64_t y_count, const int64_t* y_offsets, int64_t pairs) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kStoreWarps + threadIdx.x / 32;
  if (pair >= pairs) return;
  const int64_t x_start = clamped_offset(x_offsets, pair, 0, x_count);
  const int64_t x_stop = clamped_offset(x_offsets, pair + 1, x_start, x_count);
  const int64_t y_start = clamped_offset(y_offsets, pair, 0, y_count);
  const int64_t y_stop = clamped_offset(y_offsets, pair + 1, y_start, y_count);
  const int64_t y_ones = y_stop - y_start;
  const int64_t combinations = (x_stop - x_start) * y_ones;
  for (int64_t c = threadIdx.x % 32; c < combinations; c += 32) {
    const int64_t row = x_values[x_start + c / y_ones], unit = y_values[y_start + c % y_ones];
    if (row < 0 || row >= n_in || unit < 0 || unit >= n_out) continue;
    atomicOr(matrix + row * words_per_row + (unit >> 6), Word{1} << (unit & 63));
  }
}

__global__ void and_kernel(const Word* matrix, int64_t n_in, int64_t words_per_row, const int64_t* cue_values,
                           int64_t value_count, const int64_t* cue_offsets, Word* out, int32_t* counts,
                           int64_t groups) {
  using Reduce = cub::BlockReduce<int, kGroupWords>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ int group_ones;
  const int64_t cue = blockIdx.x;
  const int64_t start = clamped_offset(cue_offsets, cue, 0, value_count);
  const int64_t stop = clamped_offset(cue_offsets, cue + 1, start, value_count);
  for (int64_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const int64_t word = group * kGroupWords + threadIdx.x;
    const bool inside = word < words_per_row;
    Word answer = stop > start ? ~Word{0} : Word{0};  // an empty cue retrieves nothing
    for (int64_t tile = start; tile < stop; tile += kRowsInFlight) {
      Word loaded[kRowsInFlight];
      load_tile_words(matrix, n_in, words_per_row, cue_values, tile, stop, word, inside, ~Word{0}, loaded);
#pragma unroll
      for (int r = 0; r < kRowsInFlight; ++r) answer &= loaded[r];
    }
    const int ones = Reduce(reduce_storage).Sum(inside ? __popcll(answer) : 0);
    if (threadIdx.x == 0) {
      counts[cue * groups + group] = ones;
      group_ones = ones;
    }
    __syncthreads();
    // A group without ones is not written (its readers take the count first): at capacity nearly every
    // group, whose write would add a row to the M rows read.
    if (inside && group_ones > 0) out[cue * words_per_row + word] = answer;
    __syncthreads();  // reduce_storage and group_ones are used again by the next group
  }
}

// positions of the set bits of each group of a cue's answer, in order, at
// out[ends[cue, group] - counts[cue, group]:ends[cue, group]]; a thread per word, its place among the
// group's positions by a block-wide prefix sum of the words' ones.
__global__ void extract_kernel(const Word* words, int64_t words_per_row, const int32_t* counts, const int64_t* ends,
                               int64_t groups, int64_t* out, int64_t total) {
  using Scan = cub::BlockScan<int, kGroupWords>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int64_t cue = blockIdx.x;
  for (int64_t group = blockIdx.y; group < groups; group += gridDim.y) {
    const int32_t count = counts[cue * groups + group];
    if (count == 0) continue;  // the same for the whole block: no thread skips the scan alone
    const int64_t word = group * kGroupWords + threadIdx.x;
    Word bits = word < words_per_row ? words[cue * words_per_row + word] : Word{0};
    int before;
    Scan(scan_storage).ExclusiveSum(__popcll(bits), before);
    for (int64_t at = ends[cue * groups + group] - count + before; bits != 0; ++at, bits &= bits - 1) {
      if (at >= 0 && at < total) out[at] = word * 64 + (__ffsll(static_cast<long long>(bits)) - 1);
    }
    __syncthreads();  // scan_storage is used again by the next group
  }
}

// out[cue, unit] = the unit's sum over the cue's rows (int32), or with at_least >= 0, sum >= at_least
// (uint8, into at_least_out).
__global__ void sums_kernel(const Word* matrix, int64_t n_in, int64_t n_out, int64_t words_per_row,
                            const int64_t* cue_values, int64_t value_count, const int64_t* cue_offsets,
                            int32_t* sums_out, uint8_t* at_least_out, int64_t at_least, int64_t unit_blocks) {
  const int64_t cue = blockIdx.x;
  const int64_t start = clamped_offset(cue_offsets, cue, 0, value_count);
  const int64_t stop = clamped_offset(cue_offsets, cue + 1, start, value_count);
  for (int64_t block = blockIdx.y; block < unit_blocks; block += gridDim.y) {
    const int64_t unit = block * kUnitThreads + threadIdx.x;
    const bool inside = unit < n_out;  // no early exit: the whole warp shuffles the tile's rows
    int32_t sum = 0;
    for (int64_t tile = start; tile < stop; tile += kRowsInFlight) {
      // A tile's loads in flight together: one at a time, each waited for (a warp asks for 8 bytes a
      // row), the kernel would be bound by latency, not bandwidth.
      Word loaded[kRowsInFlight];
      load_tile_words(matrix, n_in, words_per_row, cue_values, tile, stop, unit >> 6, inside, Word{0}, loaded);
#pragma unroll
      for (int r = 0; r < kRowsInFlight; ++r) sum += static_cast<int32_t>((loaded[r] >> (unit & 63)) & 1);
    }
    if (!inside) continue;
    if (at_least < 0) {
      sums_out[cue * n_out + unit] = sum;
    } else {
      at_least_out[cue * n_out + unit] = sum >= at_least;
    }
  }
}

// out[row, unit] (uint8 0/1) = bit unit % 64 of words[row, unit / 64], 0 in a group whose count of
// ones is 0 (and_kernel leaves its words unwritten).
__global__ void unpack_kernel(const Word* words, const int32_t* counts, int64_t groups, int64_t words_per_row,
                              int64_t n_out, uint8_t* out, int64_t unit_blocks) {
  const int64_t row = blockIdx.x;
  for (int64_t block = blockIdx.y; block < unit_blocks; block += gridDim.y) {
    const int64_t unit = block * kUnitThreads + threadIdx.x;
    if (unit >= n_out) continue;
    const int64_t word = unit >> 6;
    const bool written = counts[row * groups + word / kGroupWords] > 0;
    out[row * n_out + unit] = written ? (words[row * words_per_row + word] >> (unit & 63)) & 1 : 0;
  }
}

// *total += the set bits of words[0:count] (the caller zeroes *total).
__global__ void count_ones_kernel(const Word* words, int64_t count, Word* total) {
  using Reduce = cub::BlockReduce<Word, kCountThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  Word ones = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kCountThreads + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * kCountThreads) {
    ones += __popcll(__ldg(words + i));
  }
  const Word block_ones = Reduce(reduce_storage).Sum(ones);
  if (threadIdx.x == 0) atomicAdd(total, block_ones);
}

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

unsigned grid_x(int64_t blocks, const char* what) {
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw py::value_error(std::string(what) + ": too many for one launch, got " + std::to_string(blocks));
  }
  return static_cast<unsigned>(blocks);
}

// A block row per row (a cue, or a row of words) and up to kGridYLimit blocks along it; the kernels
// loop over the blocks past that limit.
dim3 rows_grid(int64_t rows, int64_t blocks_per_row, const char* what) {
  return dim3(grid_x(rows, what), static_cast<unsigned>(std::min(blocks_per_row, kGridYLimit)));
}

int64_t blocks_of(int64_t items, int64_t per_block) { return (items + per_block - 1) / per_block; }

int64_t checked_words_per_row(int64_t n_out) {
  check_positive(n_out, "n_out");
  return words_per_row(n_out);
}

// The inputs that the AND and the sums read, checked and resolved (nullptr where nothing is read through
// a pointer: no rows, or no values, skip every row).
struct CueQuery {
  const Word* matrix;
  const int64_t* values;
  const int64_t* offsets;
};

CueQuery resolve_query(uintptr_t matrix, int64_t n_in, uintptr_t cue_values, int64_t value_count,
                       uintptr_t cue_offsets, int64_t cues) {
  check_nonnegative(n_in, "n_in");
  check_nonnegative(value_count, "value_count");
  if (cues == 0) return {nullptr, nullptr, nullptr};
  return {n_in == 0 ? nullptr : required_device_pointer<const Word>(matrix, "matrix"),
          value_count == 0 ? nullptr : required_device_pointer<const int64_t>(cue_values, "cue_values"),
          required_device_pointer<const int64_t>(cue_offsets, "cue_offsets")};
}

}  // namespace

// Each entry point resolves its pointers and grid before the launch: an exception thrown between
// <<<...>>> and the call would leave the launch's configuration pushed for the next one.

void willshaw_store_cuda(uintptr_t matrix, int64_t n_in, int64_t n_out, uintptr_t x_values, int64_t x_count,
                         uintptr_t x_offsets, uintptr_t y_values, int64_t y_count, uintptr_t y_offsets, int64_t pairs,
                         uintptr_t stream) {
  check_nonnegative(n_in, "n_in");
  check_nonnegative(x_count, "x_count");
  check_nonnegative(y_count, "y_count");
  check_nonnegative(pairs, "pairs");
  const int64_t words_per_row = checked_words_per_row(n_out);
  if (pairs == 0 || x_count == 0 || y_count == 0 || n_in == 0) return;
  const unsigned blocks = grid_x(blocks_of(pairs, kStoreWarps), "pairs");
  Word* matrix_p = required_device_pointer<Word>(matrix, "matrix");
  const auto* x_values_p = required_device_pointer<const int64_t>(x_values, "x_values");
  const auto* x_offsets_p = required_device_pointer<const int64_t>(x_offsets, "x_offsets");
  const auto* y_values_p = required_device_pointer<const int64_t>(y_values, "y_values");
  const auto* y_offsets_p = required_device_pointer<const int64_t>(y_offsets, "y_offsets");
  store_kernel<<<blocks, 32 * kStoreWarps, 0, as_stream(stream)>>>(
      matrix_p, n_in, n_out, words_per_row, x_values_p, x_count, x_offsets_p, y_values_p, y_count, y_offsets_p, pairs);
  check_cuda(cudaGetLastError(), "willshaw store kernel");
}

void willshaw_and_cuda(uintptr_t matrix, int64_t n_in, int64_t words_per_row, uintptr_t cue_values,
                       int64_t value_count, uintptr_t cue_offsets, int64_t cues, uintptr_t words, uintptr_t counts,
                       uintptr_t stream) {
  check_positive(words_per_row, "words_per_row");
  check_nonnegative(cues, "cues");
  const CueQuery query = resolve_query(matrix, n_in, cue_values, value_count, cue_offsets, cues);
  if (cues == 0) return;
  const int64_t groups = blocks_of(words_per_row, kGroupWords);
  const dim3 grid = rows_grid(cues, groups, "cues");
  Word* words_p = required_device_pointer<Word>(words, "words");
  int32_t* counts_p = required_device_pointer<int32_t>(counts, "counts");
  and_kernel<<<grid, kGroupWords, 0, as_stream(stream)>>>(query.matrix, n_in, words_per_row, query.values,
                                                         value_count, query.offsets, words_p, counts_p, groups);
  check_cuda(cudaGetLastError(), "willshaw AND kernel");
}

void willshaw_extract_cuda(uintptr_t words, int64_t cues, int64_t words_per_row, uintptr_t counts,
                           uintptr_t ends, uintptr_t out, int64_t total, uintptr_t stream) {
  check_nonnegative(cues, "cues");
  check_nonnegative(total, "total");
  check_positive(words_per_row, "words_per_row");
  if (cues == 0 || total == 0) return;
  const int64_t groups = blocks_of(words_per_row, kGroupWords);
  const dim3 grid = rows_grid(cues, groups, "cues");
  const auto* words_p = required_device_pointer<const Word>(words, "words");
  const auto* counts_p = required_device_pointer<const int32_t>(counts, "counts");
  const auto* ends_p = required_device_pointer<const int64_t>(ends, "ends");
  int64_t* out_p = required_device_pointer<int64_t>(out, "out");
  extract_kernel<<<grid, kGroupWords, 0, as_stream(stream)>>>(words_p, words_per_row, counts_p, ends_p, groups,
                                                             out_p, total);
  check_cuda(cudaGetLastError(), "willshaw extract kernel");
}

void willshaw_sums_cuda(uintptr_t matrix, int64_t n_in, int64_t n_out, uintptr_t cue_values, int64_t value_count,
                        uintptr_t cue_offsets, int64_t cues, uintptr_t out, int64_t at_least, uintptr_t stream) {
  const int64_t words_per_row = checked_words_per_row(n_out);
  check_nonnegative(cues, "cues");
  const CueQuery query = resolve_query(matrix, n_in, cue_values, value_count, cue_offsets, cues);
  if (cues == 0) return;
  const int64_t unit_blocks = blocks_of(n_out, kUnitThreads);
  const dim3 grid = rows_grid(cues, unit_blocks, "cues");
  void* out_p = required_device_pointer<void>(out, "out");
  const bool compare = at_least >= 0;  // uint8 answers, else int32 sums
  sums_kernel<<<grid, kUnitThreads, 0, as_stream(stream)>>>(
      query.matrix, n_in, n_out, words_per_row, query.values, value_count, query.offsets,
      compare ? nullptr : static_cast<int32_t*>(out_p), compare ? static_cast<uint8_t*>(out_p) : nullptr, at_least,
      unit_blocks);
  check_cuda(cudaGetLastError(), "willshaw sums kernel");
}

void willshaw_unpack_cuda(uintptr_t words, uintptr_t counts, int64_t rows, int64_t n_out, uintptr_t out,
                          uintptr_t stream) {
  check_nonnegative(rows, "rows");
  const int64_t words_per_row = checked_words_per_row(n_out);
  if (rows == 0) return;
  const int64_t unit_blocks = blocks_of(n_out, kUnitThreads);
  const dim3 grid = rows_grid(rows, unit_blocks, "rows");
  const auto* words_p = required_device_pointer<const Word>(words, "words");
  const auto* counts_p = required_device_pointer<const int32_t>(counts, "counts");
  uint8_t* out_p = required_device_pointer<uint8_t>(out, "out");
  unpack_kernel<<<grid, kUnitThreads, 0, as_stream(stream)>>>(words_p, counts_p, blocks_of(words_per_row, kGroupWords),
                                                              words_per_row, n_out, out_p, unit_blocks);
  check_cuda(cudaGetLastError(), "willshaw unpack kernel");
}

void willshaw_count_ones_cuda(uintptr_t words, int64_t count, uintptr_t total, uintptr_t stream) {
  check_nonnegative(count, "count");
  if (count == 0) return;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(blocks_of(count, kCountThreads), 4096));
  const auto* words_p = required_device_pointer<const Word>(words, "words");
  Word* total_p = required_device_pointer<Word>(total, "total");
  count_ones_kernel<<<blocks, kCountThreads, 0, as_stream(stream)>>>(words_p, count, total_p);
  check_cuda(cudaGetLastError(), "willshaw count_ones kernel");
}

}  // namespace aefast
