// CUDA kernels of sgd_step_, adagrad_step_, rmsprop_step_ and adam_step_: the ops of
// optim_ops.h on the multi-tensor driver of multi_tensor_cuda.cuh (one launch covers many
// tensors; step, lr, grad_scale and found_inf live on the device; the constraint is
// fused), registered for CUDA.
#include <torch/library.h>

#include "optim/multi_tensor_cuda.cuh"
#include "optim/optim_ops.h"

namespace advx {
namespace optim {

TORCH_LIBRARY_IMPL(advx, CUDA, m) {
  m.impl("sgd_step_", &sgd_step<cuda_apply::Driver>);
  m.impl("adagrad_step_", &adagrad_step<cuda_apply::Driver>);
  m.impl("rmsprop_step_", &rmsprop_step<cuda_apply::Driver>);
  m.impl("adam_step_", &adam_step<cuda_apply::Driver>);
}

}  // namespace optim
}  // namespace advx
