// Operator schemas of mdlm_fast and the Python module's init. Kernels register per backend in
// cpu/*_cpu.cpp and cuda/*_cuda.cu; this file is compiled in every build.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "checks.h"
#include "mdlm_fast/categorical.h"
#include "mdlm_fast/philox.h"

extern "C" {
// Importing mdlm_fast._C registers the operators below as a side effect; the module itself
// only carries build information.
static PyObject* build_info(PyObject*, PyObject*) {
#ifdef MDLM_FAST_WITH_CUDA
  const bool with_cuda = true;
  const char* cuda_archs = MDLM_FAST_CUDA_ARCHS;
#else
  const bool with_cuda = false;
  const char* cuda_archs = "";
#endif
  return Py_BuildValue("{s:O,s:O,s:s}", "cpu", Py_True, "cuda", with_cuda ? Py_True : Py_False, "cuda_archs",
                       cuda_archs);
}

// The constants the kernels and their checks are built with, so that Python reads them from the
// extension instead of keeping copies (mdlm_fast/ops/compiled.py).
static PyObject* constants(PyObject*, PyObject*) {
  using namespace mdlm_fast;
  PyObject* dists = PyTuple_New(kNumNoiseDists);
  if (dists == nullptr) return nullptr;
  for (int i = 0; i < kNumNoiseDists; ++i) {
    PyObject* name = PyUnicode_FromString(kNoiseDistNames[i]);
    if (name == nullptr) {
      Py_DECREF(dists);
      return nullptr;
    }
    PyTuple_SET_ITEM(dists, i, name);  // steals the reference
  }
  PyObject* purposes =
      Py_BuildValue("{s:I,s:I,s:I,s:I,s:I}", "user", unsigned{kPurposeUser}, "reveal", unsigned{kPurposeReveal},
                    "token", unsigned{kPurposeToken}, "reference_gumbel", unsigned{kPurposeReferenceGumbel},
                    "noise_removal", unsigned{kPurposeNoiseRemoval});
  if (purposes == nullptr) {
    Py_DECREF(dists);
    return nullptr;
  }
  // "N" hands over the references of dists and purposes.
  return Py_BuildValue("{s:N,s:L,s:L,s:d,s:d,s:N}", "purposes", purposes, "max_step", static_cast<long long>(kMaxStep),
                       "vocab_chunk", static_cast<long long>(kVocabChunk), "min_temperature", kMinTemperature,
                       "max_temperature", kMaxTemperature, "noise_dists", dists);
}

static PyMethodDef methods[] = {{"build_info", build_info, METH_NOARGS, "Which backends this build compiled."},
                                {"constants", constants, METH_NOARGS, "The constants the kernels were built with."},
                                {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
}

TORCH_LIBRARY(mdlm_fast, m) {
  // Counter-based noise: out[i, j] is number j of the stream keyed by (seed, purpose, keys[i]).
  // dist: "uniform" (float64 in (0, 1)), "gumbel" (float64), "uniform24" (float32 in [0, 1)).
  m.def("philox_noise(Tensor keys, int seed, int purpose, int n, str dist) -> Tensor");
  // Projection of hidden rows onto the vocabulary fused with an exact categorical draw; never
  // materializes [N, V] logits. Returns token ids [N] int64 and, if return_logprob, the chosen
  // tokens' log-probabilities [N] float32 (else an empty tensor). seeds: optional int64 [N], row
  // i's own seed (overriding `seed`), so that rows of different requests share one call.
  m.def(
      "fused_head_sample(Tensor hidden, Tensor weight, Tensor? bias, Tensor keys, int seed, "
      "int purpose, float temperature, Tensor banned, bool return_logprob, Tensor? seeds=None) -> (Tensor, Tensor)");
}
