// The fused optimizer rules of vlps's kernels, written once: the table's push (from pulled
// rows or in place) and the dense update use these. Same arithmetic, in the same order, as
// the rules' TF ops in vlps/optimizers.py (tested bit for bit):
//   sgd:     var -= lr * g
//   adagrad: accum += g * g;  var -= (lr * g) / sqrt(accum + epsilon)
// `out` may be `in` (an update in place): element j is read before it is written.
#ifndef VLPS_KERNELS_RULES_H_
#define VLPS_KERNELS_RULES_H_

#include <cmath>
#include <cstdint>

namespace vlps {

inline void SgdStep(const float* var_in, const float* g, float lr, int64_t n, float* var) {
  for (int64_t j = 0; j < n; ++j) var[j] = var_in[j] - lr * g[j];
}

inline void AdagradStep(const float* var_in, const float* accum_in, const float* g, float lr,
                        float epsilon, int64_t n, float* var, float* accum) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = accum_in[j] + g[j] * g[j];
    var[j] = var_in[j] - (lr * g[j]) / std::sqrt(a + epsilon);
    accum[j] = a;
  }
}

}  // namespace vlps

#endif  // VLPS_KERNELS_RULES_H_
