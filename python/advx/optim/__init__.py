"""Drop-in replacements for torch.optim's SGD, Adagrad, RMSprop, Adam and AdamW.

Each class subclasses its torch.optim namesake: constructor arguments and defaults,
param_groups, state (``state['step']`` tensors, ``exp_avg``, ``momentum_buffer``, ...),
state_dict() and every torch.optim.lr_scheduler work unchanged, and a state_dict moves
between torch.optim.X and advx.optim.X in both directions. What changes is step(): one
fused multi-tensor kernel per parameter group (advx.ops.*_step_), which also honours
GradScaler, keeps the step counters on the parameters' device (no host sync, so a step
can be captured in a CUDA graph), and applies ``constraint=`` (advx.LpBall, advx.Box)
inside the same kernel: projected gradient descent with any of these optimizers.
With GradScaler the kernel divides the gradients by the scale as it reads them and
leaves ``.grad`` as it was (torch's fused optimizers unscale ``.grad`` in place).

Some textbooks write these rules differently; the mapping to these classes:

- EMA momentum ``v = g*v + (1-g)*grad; x -= eta*v`` is ``SGD(lr=eta, momentum=g,
  dampening=g)`` (torch's first step sets v = grad instead of (1-g)*grad).
- AdaGrad/RMSprop with eps inside the square root, ``x -= eta*g/sqrt(G + eps)``, is
  ``Adagrad``/``RMSprop`` with eps outside it, ``x -= eta*g/(sqrt(G) + eps)``: the same
  rule up to the size of eps.
- Adam with ``eta/sqrt(v_hat + eps)`` is ``Adam(eps=...)`` with eps added after the
  square root, as above.
"""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
