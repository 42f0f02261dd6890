// Macros shared by the torch-free headers (compiled by both the host compiler and nvcc).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MDLM_HOST_DEVICE __host__ __device__
#else
#define MDLM_HOST_DEVICE
#endif
