// Willshaw memory kernels on the CPU: grouped storage, bit-sliced dendritic sums and thresholds that
// work on packed words. Compiled once per instruction set (common/isa.h); with AVX-512 VPOPCNTDQ the
// popcounts are vpopcntq, with AVX2 the popcnt instruction, and portable code otherwise. Nothing here
// touches Python: the entry points (willshaw_cpu.cpp) check every argument first.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/huge_page_buffer.h"
#include "common/isa.h"
#include "willshaw/willshaw.h"

AEFAST_ISA_BEGIN
namespace {

// Words of a row handled per pass when summing: the counter planes of a block (a few x 4 KiB) stay in L1.
constexpr int64_t kBlockWords = 512;
// Cue entries grouped per storage chunk. Each chunk sweeps the rows it touches once, so a chunk
// takes at least 1/32 entry per matrix byte; the sort's buffers (12 bytes an entry) stay at most
// 192 MiB.
constexpr int64_t kMinChunkEntries = int64_t{1} << 20;
constexpr int64_t kMaxChunkEntries = int64_t{1} << 24;
// Entries ahead whose answers storage fetches early.
constexpr int64_t kPrefetchEntries = 16;

inline int bit_width(uint64_t value) { return value == 0 ? 0 : 64 - __builtin_clzll(value); }

inline uint64_t popcount_words(const uint64_t* words, int64_t count) {
  uint64_t total = 0;
  int64_t w = 0;
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
  __m512i sum = _mm512_setzero_si512();
  for (; w + 8 <= count; w += 8) sum = _mm512_add_epi64(sum, _mm512_popcnt_epi64(_mm512_loadu_si512(words + w)));
  total = static_cast<uint64_t>(_mm512_reduce_add_epi64(sum));
#endif
  for (; w < count; ++w) total += static_cast<uint64_t>(__builtin_popcountll(words[w]));
  return total;
}

inline uint64_t last_word_mask(int64_t n_out) {
  const int tail = static_cast<int>(n_out & 63);
  return tail == 0 ? ~uint64_t{0} : (uint64_t{1} << tail) - 1;
}

// Every output unit of the memory on.
void fill_valid(uint64_t* out, int64_t words, int64_t n_out) {
  std::fill(out, out + words, ~uint64_t{0});
  out[words - 1] = last_word_mask(n_out);
}

// Rows sit at random places in a matrix far larger than the caches, and the hardware prefetcher stops
// at each 4 KiB page. Reading four rows at once, and asking for the next four line by line (as
// non-temporal prefetches) while these are read, keeps enough misses in flight. On a 2-core AMD
// EPYC, a microbenchmark of random 8 KiB rows read 13 GB/s one row at a time, 24-29 four at a time
// and 34-37 with the prefetches; this kernel (hard threshold, n = 2^16) went from 13-15 to 21-23
// GB/s. A sequential read runs at 31-50 GB/s there.
constexpr int64_t kRowsInFlight = 4;

// out[w0 + k] = (first ? all ones : out[w0 + k]) & the four rows, for k < kWords.
template <int kWords>
inline void and_line(const uint64_t* const* rows, int64_t w0, bool first, uint64_t* out) {
  uint64_t line[kWords];
#pragma omp simd
  for (int k = 0; k < kWords; ++k) line[k] = rows[0][w0 + k] & rows[1][w0 + k] & rows[2][w0 + k] & rows[3][w0 + k];
  if (first) {
    for (int k = 0; k < kWords; ++k) out[w0 + k] = line[k];
  } else {
    for (int k = 0; k < kWords; ++k) out[w0 + k] &= line[k];
  }
}

// The cue a thread answers next, whose first rows the last rows of this one prefetch.
struct NextCue {
  const int64_t* rows = nullptr;
  int64_t ones = 0;
};

// The AND of the cue's rows: the units whose sum equals the number of ones (hard threshold).
void and_rows(const WillshawMatrix& m, const int64_t* cue, int64_t ones, uint64_t* out, NextCue next_cue) {
  const int64_t words = m.words_per_row;
  // Group g reads rows[g * 4 ...]; a short group repeats its last row, which is then in cache.
  auto group_rows = [&](const int64_t* indices, int64_t count, int64_t r0, const uint64_t** rows) {
    for (int64_t s = 0; s < kRowsInFlight; ++s) rows[s] = m.row(indices[std::min(r0 + s, count - 1)]);
  };
  const uint64_t* rows[kRowsInFlight];
  const uint64_t* next[kRowsInFlight];
  group_rows(cue, ones, 0, rows);
  for (int64_t r0 = 0; r0 < ones; r0 += kRowsInFlight) {
    const bool more_here = r0 + kRowsInFlight < ones;
    const bool has_next = more_here || next_cue.ones > 0;
    if (more_here) {
      group_rows(cue, ones, r0 + kRowsInFlight, next);
    } else if (has_next) {
      group_rows(next_cue.rows, next_cue.ones, 0, next);
    }
    const bool first = r0 == 0;
    int64_t w0 = 0;
    for (; w0 + 8 <= words; w0 += 8) {  // one cache line of each row; a fixed 8 so that it vectorizes
      if (has_next) {
        for (int64_t s = 0; s < kRowsInFlight; ++s) __builtin_prefetch(next[s] + w0, 0, 0);
      }
      and_line<8>(rows, w0, first, out);
    }
    for (; w0 < words; ++w0) and_line<1>(rows, w0, first, out);
    if (more_here) std::copy(next, next + kRowsInFlight, rows);
  }
}

inline void prefetch_words(const uint64_t* words, int64_t count) {
  for (int64_t w = 0; w < count; w += 8) __builtin_prefetch(words + w, 0, 3);
}

// Bit-sliced counters: plane p holds bit p of each output unit's dendritic sum. Each row is added with
// a ripple of half adders over the planes, a word (64 units) at a time, without unpacking.
void count_into_planes(const WillshawMatrix& m, const int64_t* cue, int64_t ones, int planes,
                       uint64_t* plane_words, uint64_t* carry) {
  const int64_t words = m.words_per_row;
  for (int p = 0; p < planes; ++p) std::fill(plane_words + p * words, plane_words + (p + 1) * words, 0);
  for (int64_t w0 = 0; w0 < words; w0 += kBlockWords) {
    const int64_t n = std::min(kBlockWords, words - w0);
    for (int64_t r = 0; r < ones; ++r) {
      if (r + 1 < ones) prefetch_words(m.row(cue[r + 1]) + w0, n);
      std::memcpy(carry, m.row(cue[r]) + w0, static_cast<size_t>(n) * sizeof(uint64_t));
      // Sums never pass `ones` < 2^planes, so the last carry is always zero.
      for (int p = 0; p < planes; ++p) {
        uint64_t* plane = plane_words + p * words + w0;
#pragma omp simd
        for (int64_t w = 0; w < n; ++w) {
          const uint64_t both = plane[w] & carry[w];
          plane[w] ^= carry[w];
          carry[w] = both;
        }
      }
    }
  }
}

// The units whose sum is >= threshold, compared bit-plane by bit-plane from the top.
void at_least(const uint64_t* plane_words, int planes, int64_t words, int64_t n_out, uint64_t threshold,
              uint64_t* out, uint64_t* equal) {
  if (threshold == 0) return fill_valid(out, words, n_out);
  if (bit_width(threshold) > planes) return static_cast<void>(std::fill(out, out + words, 0));
  std::fill(out, out + words, 0);  // out: greater so far; equal: equal so far
  std::fill(equal, equal + words, ~uint64_t{0});
  for (int p = planes - 1; p >= 0; --p) {
    const uint64_t* plane = plane_words + p * words;
    if ((threshold >> p) & 1) {
#pragma omp simd
      for (int64_t w = 0; w < words; ++w) equal[w] &= plane[w];
    } else {
#pragma omp simd
      for (int64_t w = 0; w < words; ++w) {
        out[w] |= equal[w] & plane[w];
        equal[w] &= ~plane[w];
      }
    }
  }
#pragma omp simd
  for (int64_t w = 0; w < words; ++w) out[w] |= equal[w];
}

// Per-thread scratch of one query.
struct QueryScratch {
  std::vector<uint64_t> planes, carry, work_a, work_b;
  QueryScratch(int max_planes, int64_t words)
      : planes(static_cast<size_t>(std::max(max_planes, 1) * words)), carry(kBlockWords), work_a(words),
        work_b(words) {}
};

// The soft threshold: the units at the largest sum, or nothing when that is 0.
void soft_threshold(const WillshawMatrix& m, const int64_t* cue, int64_t ones, QueryScratch& s, uint64_t* out,
                    NextCue next_cue) {
  const int64_t words = m.words_per_row;
  and_rows(m, cue, ones, out, next_cue);
  // A stored complete cue reaches the largest possible sum, `ones`: then the AND is the answer.
  if (popcount_words(out, words) > 0) return;
  const int planes = bit_width(static_cast<uint64_t>(ones));
  count_into_planes(m, cue, ones, planes, s.planes.data(), s.carry.data());
  fill_valid(out, words, m.n_out);  // the units that reach the best sum found so far
  bool found = false;
  for (int p = planes - 1; p >= 0; --p) {
    const uint64_t* plane = s.planes.data() + p * words;
    uint64_t any = 0;
    for (int64_t w = 0; w < words; ++w) any |= out[w] & plane[w];
    if (any == 0) continue;
    found = true;
#pragma omp simd
    for (int64_t w = 0; w < words; ++w) out[w] &= plane[w];
  }
  if (!found) std::fill(out, out + words, 0);
}

// The k largest sums, ties to the lower index: the largest T with at least k sums >= T, all units
// above T, then units at exactly T in index order until there are k.
void topk_threshold(const WillshawMatrix& m, const int64_t* cue, int64_t ones, int64_t k, QueryScratch& s,
                    uint64_t* out) {
  const int64_t words = m.words_per_row;
  const int planes = bit_width(static_cast<uint64_t>(ones));
  count_into_planes(m, cue, ones, planes, s.planes.data(), s.carry.data());
  auto count_at_least = [&](uint64_t t) {
    at_least(s.planes.data(), planes, words, m.n_out, t, s.work_a.data(), s.work_b.data());
    return static_cast<int64_t>(popcount_words(s.work_a.data(), words));
  };
  uint64_t low = 0, high = static_cast<uint64_t>(ones);
  while (low < high) {
    const uint64_t mid = (low + high + 1) / 2;
    if (count_at_least(mid) >= k) low = mid; else high = mid - 1;
  }
  at_least(s.planes.data(), planes, words, m.n_out, low + 1, out, s.work_b.data());
  int64_t need = k - static_cast<int64_t>(popcount_words(out, words));
  at_least(s.planes.data(), planes, words, m.n_out, low, s.work_a.data(), s.work_b.data());
  for (int64_t w = 0; w < words && need > 0; ++w) {
    uint64_t tied = s.work_a[w] & ~out[w];
    while (tied != 0 && need > 0) {
      const uint64_t lowest = tied & (~tied + 1);
      out[w] |= lowest;
      tied ^= lowest;
      --need;
    }
  }
}

void unpack_bits(const uint64_t* bits, int64_t n_out, uint8_t* out) {
  for (int64_t i0 = 0; i0 < n_out; i0 += 64) {
    const uint64_t word = bits[i0 >> 6];
    const int64_t n = std::min<int64_t>(64, n_out - i0);
#pragma omp simd
    for (int64_t b = 0; b < n; ++b) out[i0 + b] = static_cast<uint8_t>((word >> b) & 1);
  }
}

int max_planes(const PatternRows& cue) {
  int64_t most = 0;
  for (int64_t b = 0; b < cue.rows; ++b) most = std::max(most, cue.count(b));
  return bit_width(static_cast<uint64_t>(most));
}

std::vector<QueryScratch> scratch_per_thread(const PatternRows& cue, int64_t words) {
  const int planes = max_planes(cue);
  return std::vector<QueryScratch>(static_cast<size_t>(omp_get_max_threads()), QueryScratch(planes, words));
}

// Which thread owns a matrix row during storage. The rows are cut into at most 4096 blocks of a
// power of two and each thread owns a run of whole blocks, so a row's owner is one shift and one
// lookup in a table that stays in L1 (no division per entry); the threads' shares differ by at most a
// block.
class RowOwners {
 public:
  RowOwners(int64_t n_in, int threads) : first_(static_cast<size_t>(threads) + 1) {
    shift_ = std::max(0, bit_width(static_cast<uint64_t>(n_in - 1)) - 12);
    const int64_t blocks = ((n_in - 1) >> shift_) + 1;
    for (int t = 0; t <= threads; ++t) first_[t] = std::min(n_in, (blocks * t / threads) << shift_);
    owner_of_block_.resize(static_cast<size_t>(blocks));
    for (int t = 0; t < threads; ++t) {
      for (int64_t b = first_[t] >> shift_; b < (first_[t + 1] + (int64_t{1} << shift_) - 1) >> shift_; ++b) {
        owner_of_block_[b] = t;
      }
    }
  }
  int64_t first_row(int t) const { return first_[t]; }
  int owner(int64_t row) const { return owner_of_block_[static_cast<size_t>(row >> shift_)]; }

 private:
  std::vector<int64_t> first_;
  std::vector<int32_t> owner_of_block_;
  int shift_;
};

// A cue entry on its way to the thread that owns its row: the row counted from that thread's first.
struct RowEntry {
  int32_t row_in_range, pair_in_chunk;
};

// The store split among `threads` threads; returns the size of the team OpenMP gave, having written
// nothing when that was not `threads` (OMP_THREAD_LIMIT or dynamic teams may give fewer than
// omp_get_max_threads(), and the rows of a thread that never came would be left out).
int store_with_threads(const WillshawMatrix& m, const PatternRows& x, const PatternRows& y, int threads) {
  // The pairs go in chunks. Each thread owns a contiguous range of input rows. Per chunk, each thread
  // hands the cue entries of its share of the pairs to the threads that own their rows; each owner
  // sorts what it received by row (a counting sort) and then ORs every pair's answer into each of
  // its rows in turn, so a row is fetched once per chunk instead of once per bit. (Each thread used
  // to scan every entry of the chunk for its own rows: with 16 threads on the 2-core CI machine,
  // 2^20 pairs at n = 2^16, M = 14 took 0.80 s against 0.47 s with 2.)
  const int64_t chunk_entries = std::clamp<int64_t>(m.n_in * m.words_per_row / 4, kMinChunkEntries, kMaxChunkEntries);
  std::vector<int64_t> chunk_starts{0};
  int64_t largest_chunk = 0, largest_answers = 0;
  while (chunk_starts.back() < x.rows) {
    const int64_t p0 = chunk_starts.back();
    int64_t p1 = std::upper_bound(x.offsets + p0 + 1, x.offsets + x.rows + 1, x.offsets[p0] + chunk_entries) -
                 x.offsets - 1;
    p1 = std::min(std::max(p1, p0 + 1), p0 + (int64_t{1} << 30));  // pair ids within a chunk fit int32
    largest_chunk = std::max(largest_chunk, x.offsets[p1] - x.offsets[p0]);
    largest_answers = std::max(largest_answers, y.offsets[p1] - y.offsets[p0]);
    chunk_starts.push_back(p1);
  }
  const RowOwners owners(m.n_in, threads);
  // Allocated before the first write, so a failed allocation leaves the memory unchanged.
  ScratchArray<RowEntry> handed = scratch_array<RowEntry>(static_cast<size_t>(largest_chunk));
  ScratchArray<int32_t> bucket = scratch_array<int32_t>(static_cast<size_t>(largest_chunk));
  // The chunk's answers as 32-bit units (n_out < 2^31) on huge pages: the row sweep reads each pair's
  // answer once per one of its cue, in random order, and from int64 units on 4 KiB pages nearly every
  // read missed the TLB and took two cache lines. At n = 2^16, M = 14, 2^20 pairs: 0.68 s -> 0.37 s
  // in a microbenchmark of this loop (2-core AMD EPYC), the copy included.
  ScratchArray<uint32_t> answers = scratch_array<uint32_t>(static_cast<size_t>(largest_answers));
  // sent[t * threads + o]: entries of thread t's pairs whose rows thread o owns; cursors: where t
  // writes the next of them. (Nothing is allocated in the parallel region, where a throw would abort.)
  std::vector<int64_t> sent(static_cast<size_t>(threads) * threads), cursors(sent.size());
  std::vector<std::vector<int64_t>> row_starts(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    row_starts[t].resize(static_cast<size_t>(owners.first_row(t + 1) - owners.first_row(t) + 1));
  }
  int team = threads;
#pragma omp parallel num_threads(threads)
  {
    if (omp_get_num_threads() != threads) {
#pragma omp single
      team = omp_get_num_threads();
    } else {
      const int t = omp_get_thread_num();
      const int64_t row_begin = owners.first_row(t), row_end = owners.first_row(t + 1);
      std::vector<int64_t>& starts = row_starts[t];
      int64_t* cursor = cursors.data() + static_cast<size_t>(t) * threads;
      for (size_t c = 0; c + 1 < chunk_starts.size(); ++c) {
        const int64_t p0 = chunk_starts[c], p1 = chunk_starts[c + 1];
        const int64_t my_p0 = p0 + (p1 - p0) * t / threads, my_p1 = p0 + (p1 - p0) * (t + 1) / threads;
        const int64_t answers_begin = y.offsets[p0];
#pragma omp for schedule(static)
        for (int64_t e = answers_begin; e < y.offsets[p1]; ++e) answers[e - answers_begin] = static_cast<uint32_t>(y.values[e]);
        // 1. Count, per owner, the entries of this thread's pairs.
        int64_t* my_sent = sent.data() + static_cast<size_t>(t) * threads;
        std::fill(my_sent, my_sent + threads, 0);
        for (const int64_t* j = x.begin(my_p0); j != x.begin(my_p1); ++j) ++my_sent[owners.owner(*j)];
#pragma omp barrier
        // 2. Entries go grouped by owner, and within an owner by sender.
        int64_t region_begin = 0, region_end = 0, offset = 0;
        for (int o = 0; o < threads; ++o) {
          if (o == t) region_begin = offset;
          for (int u = 0; u < threads; ++u) {
            if (u == t) cursor[o] = offset;
            offset += sent[static_cast<size_t>(u) * threads + o];
          }
          if (o == t) region_end = offset;
        }
        for (int64_t p = my_p0; p < my_p1; ++p) {
          for (const int64_t* j = x.begin(p); j != x.begin(p) + x.count(p); ++j) {
            const int o = owners.owner(*j);
            handed[cursor[o]++] = RowEntry{static_cast<int32_t>(*j - owners.first_row(o)), static_cast<int32_t>(p - p0)};
          }
        }
#pragma omp barrier
        // 3. Sort what this thread received by row, into its region of the bucket.
        std::fill(starts.begin(), starts.end(), 0);
        for (int64_t e = region_begin; e < region_end; ++e) ++starts[handed[e].row_in_range + 1];
        for (size_t r = 1; r < starts.size(); ++r) starts[r] += starts[r - 1];
        int32_t* mine = bucket.get() + region_begin;
        for (int64_t e = region_begin; e < region_end; ++e) {
          const RowEntry entry = handed[e];
          mine[starts[entry.row_in_range]++] = entry.pair_in_chunk;
        }
        // The scatter advanced each row's start to the next row's: shift back by one row.
        for (size_t r = starts.size() - 1; r > 0; --r) starts[r] = starts[r - 1];
        starts[0] = 0;
        // 4. The answers of the pairs are scattered: fetch those a few entries ahead (their offsets
        // further ahead still), or every entry waits for memory: 2^20 pairs at n = 2^16, M = 14 went
        // from 2.1 s to 0.74 s (2-core AMD EPYC), and fetching the next row early to 0.65 s.
        const int64_t total = region_end - region_begin;
        int64_t e = 0;
        for (int64_t r = row_begin; r < row_end; ++r) {
          uint64_t* row = m.words + r * m.words_per_row;
          if (r + 1 < row_end && starts[r - row_begin + 2] > starts[r - row_begin + 1]) {
            for (int64_t w = 0; w < m.words_per_row; w += 8) __builtin_prefetch(row + m.words_per_row + w, 1, 3);
          }
          for (const int64_t end = starts[r - row_begin + 1]; e < end; ++e) {
            if (e + 2 * kPrefetchEntries < total) __builtin_prefetch(y.offsets + p0 + mine[e + 2 * kPrefetchEntries]);
            if (e + kPrefetchEntries < total) {
              const uint32_t* ahead = answers.get() + (y.offsets[p0 + mine[e + kPrefetchEntries]] - answers_begin);
              __builtin_prefetch(ahead);
              __builtin_prefetch(ahead + 16);
            }
            const int64_t p = p0 + mine[e];
            const uint32_t* units = answers.get() + (y.offsets[p] - answers_begin);
            const int64_t count = y.count(p);
            for (int64_t u = 0; u < count; ++u) row[units[u] >> 6] |= uint64_t{1} << (units[u] & 63);
          }
        }
#pragma omp barrier
      }
    }
  }
  return team;
}

}  // namespace

void willshaw_store(const WillshawMatrix& m, const PatternRows& x, const PatternRows& y) {
  // Retried once with the team OpenMP gave, then on one thread, which any team can be.
  int threads = omp_get_max_threads();
  for (int attempt = 0;; ++attempt) {
    const int team = store_with_threads(m, x, y, threads);
    if (team == threads) return;
    threads = attempt == 0 ? std::max(team, 1) : 1;
  }
}

void willshaw_sums(const WillshawMatrix& m, const PatternRows& cue, int32_t* sums) {
  std::vector<QueryScratch> scratch = scratch_per_thread(cue, m.words_per_row);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < cue.rows; ++b) {
    QueryScratch& s = scratch[omp_get_thread_num()];
    const int64_t ones = cue.count(b);
    const int planes = bit_width(static_cast<uint64_t>(ones));
    int32_t* out = sums + b * m.n_out;
    count_into_planes(m, cue.begin(b), ones, planes, s.planes.data(), s.carry.data());
    for (int64_t i0 = 0; i0 < m.n_out; i0 += 64) {
      int32_t unit_sums[64] = {};
      for (int p = 0; p < planes; ++p) {
        const uint64_t word = s.planes[p * m.words_per_row + (i0 >> 6)];
#pragma omp simd
        for (int b2 = 0; b2 < 64; ++b2) unit_sums[b2] |= static_cast<int32_t>((word >> b2) & 1) << p;
      }
      std::memcpy(out + i0, unit_sums, static_cast<size_t>(std::min<int64_t>(64, m.n_out - i0)) * sizeof(int32_t));
    }
  }
}

void willshaw_retrieve(const WillshawMatrix& m, const PatternRows& cue, Threshold threshold, int64_t value,
                       uint64_t* answer_bits, uint8_t* answer_bool, int64_t* answer_counts) {
  const int64_t words = m.words_per_row;
  std::vector<QueryScratch> scratch = scratch_per_thread(cue, words);
  // Static: each thread answers a run of consecutive cues, so cue b + 1 is usually its next.
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < cue.rows; ++b) {
    QueryScratch& s = scratch[omp_get_thread_num()];
    const int64_t* rows = cue.begin(b);
    const int64_t ones = cue.count(b);
    const NextCue next = b + 1 < cue.rows ? NextCue{cue.begin(b + 1), cue.count(b + 1)} : NextCue{};
    uint64_t* out = answer_bits + b * words;
    const int64_t fixed_t = threshold == Threshold::hard ? ones : value;
    if (threshold == Threshold::topk) {
      topk_threshold(m, rows, ones, value, s, out);
    } else if (ones == 0 && threshold != Threshold::fixed) {
      std::fill(out, out + words, 0);  // an empty cue retrieves nothing under hard and soft
    } else if (threshold == Threshold::soft) {
      soft_threshold(m, rows, ones, s, out, next);
    } else if (fixed_t > ones) {
      std::fill(out, out + words, 0);
    } else if (fixed_t == ones && ones > 0) {
      and_rows(m, rows, ones, out, next);  // no counting needed: every row must have the bit
    } else {
      const int planes = bit_width(static_cast<uint64_t>(ones));
      count_into_planes(m, rows, ones, planes, s.planes.data(), s.carry.data());
      at_least(s.planes.data(), planes, words, m.n_out, static_cast<uint64_t>(fixed_t), out, s.work_a.data());
    }
    if (answer_bool != nullptr) unpack_bits(out, m.n_out, answer_bool + b * m.n_out);
    if (answer_counts != nullptr) answer_counts[b] = static_cast<int64_t>(popcount_words(out, words));
  }
}

uint64_t count_ones(const uint64_t* words, int64_t count) {
  constexpr int64_t kChunk = int64_t{1} << 16;
  uint64_t total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t c = 0; c < count; c += kChunk) total += popcount_words(words + c, std::min(kChunk, count - c));
  return total;
}

AEFAST_ISA_END
