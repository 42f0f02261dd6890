// Stand-in for the CUDA toolkit header: the emulator provides what the kernels use.
#pragma once
#include "cuda_emu.h"
