// The training gather of a DynamicEmbedding layer and its gradient, as two ops.
//
// VlpsGatherColumns: the pulled unique rows [n, W] and each occurrence's index idx [P] give
// one output per column group ([P, w_k], the groups' widths summing to W), in one pass over
// the occurrences. It replaces a split of the unique rows and one tf.gather per group.
//
// VlpsSegmentSumColumns: the gradients of those outputs summed per unique row, as whole rows
// [n, W]. Each row's terms are added in occurrence order, starting from zero: the same bits
// as tf.math.unsorted_segment_sum of each group followed by their concatenation. It replaces
// an XLA-compiled segment sum (a single-threaded loop), a slice and a concatenation. The rows
// are split in ranges, one per CPU worker thread; each thread reads every index but sums only
// the rows of its range, so the order of the terms of a row does not depend on the split.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace vlps {
namespace {

using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpOutputList;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// The column groups: widths from the attr, offsets into a row.
struct Columns {
  std::vector<int64_t> width, offset;
  int64_t total = 0;
};

absl::Status ReadColumns(OpKernelConstruction* ctx, const char* op, Columns* c) {
  std::vector<int32_t> widths;
  TF_RETURN_IF_ERROR(ctx->GetAttr("columns", &widths));
  if (widths.empty())
    return ::tensorflow::errors::InvalidArgument(op, ": columns must not be empty");
  for (int32_t w : widths) {
    if (w <= 0)
      return ::tensorflow::errors::InvalidArgument(op, ": every column group needs a "
                                                   "width > 0, got ", w);
    c->offset.push_back(c->total);
    c->width.push_back(w);
    c->total += w;
  }
  return absl::OkStatus();
}

// The first index outside [0, n), as an error naming it; OK when all are inside.
absl::Status CheckIndices(const char* op, const int32_t* idx, int64_t p, int64_t n) {
  for (int64_t j = 0; j < p; ++j)
    if (idx[j] < 0 || idx[j] >= n)
      return ::tensorflow::errors::InvalidArgument(op, ": idx[", j, "] = ", idx[j],
                                                   " is not in [0, ", n, ")");
  return absl::OkStatus();
}

// A group's cost per occurrence for TensorFlow's sharder (roughly cycles): a row copy or add.
int64_t CostPerOccurrence(const Columns& c) { return 8 + 2 * c.total; }

class GatherColumnsOp : public OpKernel {
 public:
  explicit GatherColumnsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadColumns(ctx, "VlpsGatherColumns", &columns_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& rows = ctx->input(0);
    const Tensor& idx_t = ctx->input(1);
    OP_REQUIRES(ctx, rows.dims() == 2 && rows.dim_size(1) == columns_.total,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsGatherColumns: rows must be [n, ", columns_.total,
                    "] (the column groups' widths summed), got ", rows.shape().DebugString()));
    OP_REQUIRES(ctx, idx_t.dims() == 1,
                ::tensorflow::errors::InvalidArgument("VlpsGatherColumns: idx must be 1-D, got ",
                                                      idx_t.shape().DebugString()));
    const int64_t n = rows.dim_size(0);
    const int64_t p = idx_t.NumElements();
    const int32_t* idx = idx_t.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckIndices("VlpsGatherColumns", idx, p, n));
    const int64_t k = static_cast<int64_t>(columns_.width.size());
    OpOutputList outs;
    OP_REQUIRES_OK(ctx, ctx->output_list("outputs", &outs));
    std::vector<float*> dst(k);
    for (int64_t g = 0; g < k; ++g) {
      Tensor* out;
      OP_REQUIRES_OK(ctx, outs.allocate(g, TensorShape({p, columns_.width[g]}), &out));
      dst[g] = out->flat<float>().data();
    }
    if (p == 0) return;
    const float* src = rows.flat<float>().data();
    const Columns& c = columns_;
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(
        workers->num_threads, workers->workers, p, CostPerOccurrence(c),
        [&](int64_t begin, int64_t end) {
          for (int64_t j = begin; j < end; ++j) {
            const float* row = src + static_cast<int64_t>(idx[j]) * c.total;
            for (int64_t g = 0; g < k; ++g) {
              const int64_t w = c.width[g];
              if (w == 1) {
                dst[g][j] = row[c.offset[g]];
              } else {
                std::memcpy(dst[g] + j * w, row + c.offset[g], w * sizeof(float));
              }
            }
          }
        });
  }

 private:
  Columns columns_;
};

class SegmentSumColumnsOp : public OpKernel {
 public:
  explicit SegmentSumColumnsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadColumns(ctx, "VlpsSegmentSumColumns", &columns_));
  }

  void Compute(OpKernelContext* ctx) override {
    OpInputList grads;
    OP_REQUIRES_OK(ctx, ctx->input_list("grads", &grads));
    const Tensor& idx_t = ctx->input(grads.size());
    const Tensor& n_t = ctx->input(grads.size() + 1);
    const int64_t k = static_cast<int64_t>(columns_.width.size());
    OP_REQUIRES(ctx, grads.size() == k,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsSegmentSumColumns: ", k, " column groups need ", k,
                    " gradients, got ", grads.size()));
    OP_REQUIRES(ctx, idx_t.dims() == 1 && ::tensorflow::TensorShapeUtils::IsScalar(n_t.shape()),
                ::tensorflow::errors::InvalidArgument(
                    "VlpsSegmentSumColumns: idx must be 1-D and n a scalar, got ",
                    idx_t.shape().DebugString(), " and ", n_t.shape().DebugString()));
    const int64_t p = idx_t.NumElements();
    const int64_t n = n_t.scalar<int32_t>()();
    OP_REQUIRES(ctx, n >= 0, ::tensorflow::errors::InvalidArgument(
                                 "VlpsSegmentSumColumns: n must be >= 0, got ", n));
    std::vector<const float*> dy(k);
    for (int64_t g = 0; g < k; ++g) {
      const Tensor& t = grads[g];
      OP_REQUIRES(ctx, t.NumElements() == p * columns_.width[g],
                  ::tensorflow::errors::InvalidArgument(
                      "VlpsSegmentSumColumns: gradient ", g, " must have ", p, "x",
                      columns_.width[g], " values (one row per occurrence), got shape ",
                      t.shape().DebugString()));
      dy[g] = t.flat<float>().data();
    }
    const int32_t* idx = idx_t.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckIndices("VlpsSegmentSumColumns", idx, p, n));
    Tensor* out_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, columns_.total}), &out_t));
    if (n == 0) return;
    float* out = out_t->flat<float>().data();
    const Columns& c = columns_;
    const int64_t width = c.total;
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    // One range of rows per worker thread; each range is zeroed and summed by one thread.
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(workers->num_threads, n));
    auto sum = [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t lo = n * part / parts;
        const int64_t hi = n * (part + 1) / parts;
        std::memset(out + lo * width, 0, (hi - lo) * width * sizeof(float));
        for (int64_t j = 0; j < p; ++j) {
          const int64_t r = idx[j];
          if (r < lo || r >= hi) continue;
          float* row = out + r * width;
          for (int64_t g = 0; g < k; ++g) {
            const int64_t w = c.width[g];
            float* d = row + c.offset[g];
            const float* s = dy[g] + j * w;
            for (int64_t i = 0; i < w; ++i) d[i] += s[i];
          }
        }
      }
    };
    if (parts == 1 || p * width < 65536) {
      sum(0, parts);
      return;
    }
    // The cost per part is the whole scan: the sharder then runs one part per block.
    ::tensorflow::Shard(parts, workers->workers, parts, int64_t{1} << 30, sum);
  }

 private:
  Columns columns_;
};

}  // namespace

REGISTER_OP("VlpsGatherColumns")
    .Input("rows: float")
    .Input("idx: int32")
    .Output("outputs: K * float")
    .Attr("columns: list(int) >= 1")
    .Attr("K: int >= 1")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int32_t> widths;
      TF_RETURN_IF_ERROR(c->GetAttr("columns", &widths));
      int32_t k;
      TF_RETURN_IF_ERROR(c->GetAttr("K", &k));
      if (k != static_cast<int32_t>(widths.size()))
        return ::tensorflow::errors::InvalidArgument(
            "VlpsGatherColumns: K (", k, ") must be the number of column groups (",
            widths.size(), ")");
      ::tensorflow::shape_inference::ShapeHandle rows, idx;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &rows));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &idx));
      for (int32_t g = 0; g < k; ++g)
        c->set_output(g, c->Matrix(c->Dim(idx, 0), widths[g]));
      return absl::OkStatus();
    });

REGISTER_OP("VlpsSegmentSumColumns")
    .Input("grads: K * float")
    .Input("idx: int32")
    .Input("n: int32")
    .Output("sums: float")
    .Attr("columns: list(int) >= 1")
    .Attr("K: int >= 1")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      std::vector<int32_t> widths;
      TF_RETURN_IF_ERROR(c->GetAttr("columns", &widths));
      int64_t total = 0;
      for (int32_t w : widths) total += w;
      ::tensorflow::shape_inference::DimensionHandle n;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(c->num_inputs() - 1, &n));
      c->set_output(0, c->Matrix(n, total));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsGatherColumns").Device(::tensorflow::DEVICE_CPU),
                        GatherColumnsOp);
REGISTER_KERNEL_BUILDER(Name("VlpsSegmentSumColumns").Device(::tensorflow::DEVICE_CPU),
                        SegmentSumColumnsOp);

}  // namespace vlps
