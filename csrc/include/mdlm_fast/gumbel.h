// Uniform -> Gumbel(0, 1) in double precision: g = -log(-log(u)), u in (0, 1) from uniform53.
#pragma once

#include <math.h>

#include "mdlm_fast/common.h"
#include "mdlm_fast/philox.h"

namespace mdlm_fast {

MDLM_HOST_DEVICE inline double gumbel_from_uniform(double u) { return -log(-log(u)); }

MDLM_HOST_DEVICE inline double gumbel53_at(const NoiseKey& key, uint32_t index) {
  return gumbel_from_uniform(uniform53_at(key, index));
}

}  // namespace mdlm_fast
