// VlpsDenseApply: the SGD or Adagrad step of several dense variables in one op, from one flat
// gradient (the variables' gradients concatenated in order). On a cluster the dense variables
// of a ps task are updated by one op there instead of a dozen TF ops per variable, each a
// thread hand-off in the ps's executor. The arithmetic is the rule's (vlps/kernels/rules.h,
// shared with the table's push).
// Variables and slots are locked in address order, as TF's own training ops lock theirs.

#define EIGEN_USE_THREADS

#include <numeric>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "vlps/kernels/rules.h"

namespace vlps {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

class DenseApplyOp : public OpKernel {
 public:
  explicit DenseApplyOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string rule;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule));
    adagrad_ = rule == "adagrad";
    OP_REQUIRES_OK(ctx, ctx->GetAttr("learning_rate", &lr_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("M", &m_));
    OP_REQUIRES(ctx, m_ == (adagrad_ ? n_ : 0),
                ::tensorflow::errors::InvalidArgument(
                    "VlpsDenseApply: ", rule, " takes ", adagrad_ ? n_ : 0,
                    " slot variable(s) for ", n_, " variable(s), got ", m_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<int> inputs(n_ + m_);
    std::iota(inputs.begin(), inputs.end(), 0);
    auto locks = ::tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, float>(
        ctx, /*do_lock=*/true, /*sparse=*/false, inputs);
    const Tensor& grad = ctx->input(n_ + m_);
    const int64_t total = grad.NumElements();
    // Every size is checked before anything is written: a bad gradient changes nothing.
    std::vector<Tensor> vars(n_), accums(adagrad_ ? n_ : 0);
    int64_t sum = 0;
    for (int i = 0; i < n_; ++i) {
      OP_REQUIRES_OK(ctx, ::tensorflow::GetInputTensorFromVariable<CPUDevice, float>(
                              ctx, i, /*lock_held=*/true, /*sparse=*/false, &vars[i]));
      sum += vars[i].NumElements();
      if (!adagrad_) continue;
      OP_REQUIRES_OK(ctx, ::tensorflow::GetInputTensorFromVariable<CPUDevice, float>(
                              ctx, n_ + i, /*lock_held=*/true, /*sparse=*/false, &accums[i]));
      OP_REQUIRES(ctx, accums[i].NumElements() == vars[i].NumElements(),
                  ::tensorflow::errors::InvalidArgument(
                      "VlpsDenseApply: variable ", i, " has ", vars[i].NumElements(),
                      " elements, its accumulator ", accums[i].NumElements()));
    }
    OP_REQUIRES(ctx, sum == total,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsDenseApply: the gradient has ", total, " elements, the variables ",
                    sum));
    const float* g = grad.flat<float>().data();
    int64_t offset = 0;
    for (int i = 0; i < n_; ++i) {
      const int64_t size = vars[i].NumElements();
      float* v = vars[i].flat<float>().data();
      if (adagrad_) {
        float* a = accums[i].flat<float>().data();
        AdagradStep(v, a, g + offset, lr_, epsilon_, size, v, a);
      } else {
        SgdStep(v, g + offset, lr_, size, v);
      }
      offset += size;
    }
  }

 private:
  bool adagrad_ = false;
  float lr_ = 0;
  float epsilon_ = 0;
  int n_ = 0;
  int m_ = 0;
};

}  // namespace

REGISTER_OP("VlpsDenseApply")
    .Input("variables: N * resource")
    .Input("slots: M * resource")
    .Input("grad: float")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("rule: {'sgd', 'adagrad'}")
    .Attr("learning_rate: float")
    .Attr("epsilon: float = 0")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs);

REGISTER_KERNEL_BUILDER(Name("VlpsDenseApply").Device(::tensorflow::DEVICE_CPU), DenseApplyOp);

}  // namespace vlps
