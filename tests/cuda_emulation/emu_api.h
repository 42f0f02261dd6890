// C entry points of the emulator library (loaded from Python with ctypes; see emulator.py).
#pragma once

#include <stddef.h>
#include <stdint.h>

#define EMU_ORDER_FORWARD 0
#define EMU_ORDER_REVERSE 1
#define EMU_ORDER_RANDOM 2

// Returned by the launch entry points when the emulator stopped a kernel (emu_last_fault says why).
#define EMU_FAULT (-1)

extern "C" {
// Thread and block order of every later launch, and the emulated device: compute capability
// major and the opt-in shared memory per block (sm_90: 232448 bytes).
void emu_configure(int order, uint64_t seed, int major, int smem_optin);
const char* emu_last_fault();
void emu_reset();
}
