// CPU kernels of sgd_step_, adagrad_step_, rmsprop_step_ and adam_step_: the ops of
// optim_ops.h on the CPU driver of multi_tensor_cpu.h, registered for CPU. The update
// loops are instantiated here, so this file is built with -fno-math-errno
// (CMakeLists.txt): sqrt without errno is what lets gcc vectorize the Adam, Adagrad and
// RMSprop loops; results are unchanged.
#include <torch/library.h>

#include "optim/multi_tensor_cpu.h"
#include "optim/optim_ops.h"

namespace advx {
namespace optim {

TORCH_LIBRARY_IMPL(advx, CPU, m) {
  m.impl("sgd_step_", &sgd_step<cpu_apply::Driver>);
  m.impl("adagrad_step_", &adagrad_step<cpu_apply::Driver>);
  m.impl("rmsprop_step_", &rmsprop_step<cpu_apply::Driver>);
  m.impl("adam_step_", &adam_step<cpu_apply::Driver>);
}

}  // namespace optim
}  // namespace advx
