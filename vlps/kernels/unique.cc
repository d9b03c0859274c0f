// VlpsUnique: tf.unique for int64 ids (same outputs: the distinct ids in order of first
// occurrence, and for each id the index of its distinct value), with an open-addressing table
// sized for the input and the loads of ids a few positions ahead issued early. TensorFlow's
// Unique kernel (a node-based hash map) was the largest single cost of vlps's input pipeline.

#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "vlps/kernels/mix.h"

namespace vlps {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

class UniqueOp : public OpKernel {
 public:
  explicit UniqueOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    OP_REQUIRES(ctx, input.dims() == 1,
                ::tensorflow::errors::InvalidArgument("VlpsUnique: ids must be 1-D, got ",
                                                      input.shape().DebugString()));
    const int64_t n = input.NumElements();
    OP_REQUIRES(ctx, n < (int64_t{1} << 31),
                ::tensorflow::errors::InvalidArgument("VlpsUnique: more than 2^31 ids"));
    const int64_t* ids = input.flat<int64_t>().data();
    Tensor* idx_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n}), &idx_t));
    int32_t* idx = idx_t->flat<int32_t>().data();
    // Buckets hold the position of a distinct id in `first` (-1: empty); load <= 1/2.
    int64_t buckets = 16;
    while (buckets < 2 * n) buckets *= 2;
    const int64_t mask = buckets - 1;
    std::vector<int32_t> table(buckets, -1);
    std::vector<int64_t> first;
    first.reserve(n / 2 + 1);
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n)
        __builtin_prefetch(table.data() + (Murmur3Mix(static_cast<uint64_t>(ids[i + kAhead])) & mask));
      const int64_t id = ids[i];
      int64_t s = static_cast<int64_t>(Murmur3Mix(static_cast<uint64_t>(id)) & mask);
      for (;;) {
        const int32_t at = table[s];
        if (at < 0) {
          table[s] = static_cast<int32_t>(first.size());
          idx[i] = static_cast<int32_t>(first.size());
          first.push_back(id);
          break;
        }
        if (first[at] == id) {
          idx[i] = at;
          break;
        }
        s = (s + 1) & mask;
      }
    }
    Tensor* out;
    const int64_t m = static_cast<int64_t>(first.size());
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m}), &out));
    if (m > 0) std::memcpy(out->flat<int64_t>().data(), first.data(), m * sizeof(int64_t));
  }
};

}  // namespace

REGISTER_OP("VlpsUnique")
    .Input("x: int64")
    .Output("y: int64")
    .Output("idx: int32")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle in;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &in));
      c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
      c->set_output(1, in);
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsUnique").Device(::tensorflow::DEVICE_CPU), UniqueOp);

}  // namespace vlps
