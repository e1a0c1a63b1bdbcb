// The one pybind11 module, aefast._C. Entry points take buffers (numpy views of CPU tensors) and
// check their sizes again, so no call from Python can read or write out of bounds.
#include <pybind11/pybind11.h>

#include "common/cpu_features.h"
#include "common/huge_pages.h"
#include "vae/vae.h"
#include "willshaw/willshaw.h"

namespace py = pybind11;
using namespace pybind11::literals;

PYBIND11_MODULE(_C, m) {
  m.doc() = "aefast compiled kernels";
  m.def("cpu_features", &aefast::cpu_features, "Instruction sets of this CPU that the kernels use");
  m.def("build_info", &aefast::build_info, "Compiler and features of this build");
  m.def("advise_huge_pages", &aefast::advise_huge_pages, "buffer"_a,
        "Ask Linux to back the buffer with transparent huge pages (call before its first touch)");

  m.def("vae_forward_cpu", &aefast::vae_forward_cpu, "mu"_a, "logvar"_a, "eps"_a, "z"_a, "kl"_a, "rows"_a,
        "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a, "clamp_max"_a);
  m.def("vae_backward_cpu", &aefast::vae_backward_cpu, "grad_z"_a, "grad_kl"_a, "mu"_a, "logvar"_a, "eps"_a,
        "grad_mu"_a, "grad_logvar"_a, "rows"_a, "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a,
        "clamp_max"_a);
  m.def("philox_normal_cpu", &aefast::philox_normal_cpu, "seed"_a, "offset"_a, "out"_a,
        "Fill a float32 buffer with the normals of Philox (seed, offset + i)");
  m.def("philox_uniform_cpu", &aefast::philox_uniform_cpu, "seed"_a, "offset"_a, "out"_a,
        "Fill a float32 buffer with the uniforms in [0, 1) of Philox (seed, offset + i)");

  m.def("willshaw_check_patterns", &aefast::willshaw_check_patterns, "values"_a, "offsets"_a, "rows"_a, "units"_a,
        "name"_a, "Raise ValueError naming `name` for an index outside [0, units) or listed twice in a row");
  m.def("willshaw_store_cpu", &aefast::willshaw_store_cpu, "matrix"_a, "n_in"_a, "n_out"_a, "x_values"_a,
        "x_offsets"_a, "y_values"_a, "y_offsets"_a, "rows"_a);
  m.def("willshaw_sums_cpu", &aefast::willshaw_sums_cpu, "matrix"_a, "n_in"_a, "n_out"_a, "cue_values"_a,
        "cue_offsets"_a, "rows"_a, "sums"_a);
  m.def("willshaw_retrieve_cpu", &aefast::willshaw_retrieve_cpu, "matrix"_a, "n_in"_a, "n_out"_a, "cue_values"_a,
        "cue_offsets"_a, "rows"_a, "threshold"_a, "value"_a, "answer"_a, "Answers as 0/1 bytes (rows x n_out)");
  m.def("willshaw_retrieve_indices_cpu", &aefast::willshaw_retrieve_indices_cpu, "matrix"_a, "n_in"_a, "n_out"_a,
        "cue_values"_a, "cue_offsets"_a, "rows"_a, "threshold"_a, "value"_a,
        "Answers as the active positions of each row: (values, offsets)");
  m.def("willshaw_dense_to_rows", &aefast::willshaw_dense_to_rows, "dense"_a, "rows"_a, "width"_a,
        "The nonzero positions of each row of a (rows x width) byte matrix, as (values, offsets)");
  m.def("willshaw_count_ones_cpu", &aefast::willshaw_count_ones_cpu, "matrix"_a, "count"_a);
#ifdef AEFAST_WITH_CUDA
  m.def("vae_forward_cuda", &aefast::vae_forward_cuda, "mu"_a, "logvar"_a, "eps"_a, "z"_a, "kl"_a, "rows"_a,
        "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a, "clamp_max"_a, "stream"_a);
  m.def("vae_backward_cuda", &aefast::vae_backward_cuda, "grad_z"_a, "grad_kl"_a, "mu"_a, "logvar"_a, "eps"_a,
        "grad_mu"_a, "grad_logvar"_a, "rows"_a, "cols"_a, "dtype"_a, "seed"_a, "per_element"_a, "clamp_min"_a,
        "clamp_max"_a, "stream"_a);
  m.attr("willshaw_answer_group_words") = aefast::kAnswerGroupWords;
  m.def("willshaw_store_cuda", &aefast::willshaw_store_cuda, "matrix"_a, "n_in"_a, "n_out"_a, "x_values"_a,
        "x_count"_a, "x_offsets"_a, "y_values"_a, "y_count"_a, "y_offsets"_a, "pairs"_a, "stream"_a);
  m.def("willshaw_and_cuda", &aefast::willshaw_and_cuda, "matrix"_a, "n_in"_a, "words_per_row"_a, "cue_values"_a,
        "value_count"_a, "cue_offsets"_a, "cues"_a, "words"_a, "counts"_a, "stream"_a,
        "The AND of each cue's rows as words, and its set bits per 128 words");
  m.def("willshaw_extract_cuda", &aefast::willshaw_extract_cuda, "words"_a, "cues"_a, "words_per_row"_a, "counts"_a,
        "ends"_a, "out"_a, "total"_a, "stream"_a, "The positions of the set bits of the AND's words");
  m.def("willshaw_sums_cuda", &aefast::willshaw_sums_cuda, "matrix"_a, "n_in"_a, "n_out"_a, "cue_values"_a,
        "value_count"_a, "cue_offsets"_a, "cues"_a, "out"_a, "at_least"_a, "stream"_a,
        "int32 sums, or with at_least >= 0, uint8 sum >= at_least");
  m.def("willshaw_unpack_cuda", &aefast::willshaw_unpack_cuda, "words"_a, "counts"_a, "rows"_a, "n_out"_a, "out"_a,
        "stream"_a);
  m.def("willshaw_count_ones_cuda", &aefast::willshaw_count_ones_cuda, "words"_a, "count"_a, "total"_a, "stream"_a,
        "Adds the set bits of the words to *total");
#endif
}
