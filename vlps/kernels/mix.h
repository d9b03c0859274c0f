// The 64-bit mix shared by vlps's kernels: murmur3's finaliser.
#ifndef VLPS_KERNELS_MIX_H_
#define VLPS_KERNELS_MIX_H_

#include <cstdint>

namespace vlps {

inline uint64_t Murmur3Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDULL;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ULL;
  x ^= x >> 33;
  return x;
}

}  // namespace vlps

#endif  // VLPS_KERNELS_MIX_H_
