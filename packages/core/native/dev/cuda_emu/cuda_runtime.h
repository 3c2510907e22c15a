// Stands in for the CUDA toolkit's header when a kernel source is compiled on
// the host by the emulator (see cuda_emu.h).
#pragma once
#include "cuda_emu.h"
