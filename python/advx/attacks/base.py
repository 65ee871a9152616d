"""The one attack loop every attack runs, and its result.

An attack is an *objective* to ascend per sample (cross-entropy of the true label,
or minus that of a target label) plus an *update* of the adversarial input from
the gradient of that objective. The loop takes the gradient with respect to the
input only (never the parameters), records per-sample success, and leaves the
model in the train/eval state it was given.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Callable

import torch
import torch.nn.functional as F

from .. import _validate, ops
from ..nn import Normalize
from .._rng import SampleRandom
from .._runtime import default_device, eval_mode, logits_of

__all__ = ["Attack", "AttackResult", "random_targets", "least_likely_targets"]


@dataclass
class AttackResult:
    """What one attack run produced, per sample.

    ``loss`` is the final cross-entropy against ``labels`` (the true labels, or the
    target labels of a targeted attack); ``norm`` the size of ``adv - images`` in
    the attack's norm; ``first_success`` the number of updates after which the
    sample was first adversarial (0: already at the start) or -1 if never;
    ``loss_history`` the batch mean of that loss at every iterate (``record_loss``).

    Gradient masking, per sample (``[B]`` bool tensors on the images' device):
    ``zero_grad`` is True when the input gradient of the sample was exactly zero (every
    element) at some step, ``nonfinite`` when its logits, loss or input gradient were NaN
    or inf at some step, or its logits or loss at the final evaluation pass (such a step
    leaves the sample where it was, and a sample with non-finite logits is never a
    success). A sample with either flag had a masked gradient, which gave the attack
    nothing to follow: its success or failure is no evidence about its robustness.
    ``masked`` is their union.
    """

    adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    norm: torch.Tensor
    first_success: torch.Tensor
    loss_history: list = field(default_factory=list)
    zero_grad: torch.Tensor | None = None
    nonfinite: torch.Tensor | None = None

    @property
    def masked(self) -> torch.Tensor | None:
        """Samples whose gradient was zero or non-finite at some step."""
        if self.zero_grad is None or self.nonfinite is None:
            return None
        return self.zero_grad | self.nonfinite

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else float("nan")


def check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")


def label_range(labels: torch.Tensor) -> tuple[int, int] | None:
    """(min, max) of the labels, read once with the other input checks (outside the attack
    steps, which must not sync); None for no labels."""
    if labels.numel() == 0:
        return None
    lo, hi = torch.aminmax(labels)
    return int(lo), int(hi)


def check_labels(span: tuple[int, int] | None, num_classes: int) -> None:
    """Labels are class indices of the model's output: -100 (cross-entropy's ignore
    index) or any other value outside [0, classes) would make a loss of 0 or garbage
    (and on a GPU a device-side assert)."""
    if span is not None and (span[0] < 0 or span[1] >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the model returns {num_classes} classes), "
                         f"got values in [{span[0]}, {span[1]}]")


def per_sample(value, x: torch.Tensor):
    """A float stays a float; a tensor becomes [B, 1, ..., 1] on x's device and dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=x.dtype).expand(x.shape[0]).reshape(-1, *([1] * (x.dim() - 1)))
    return value


def sample_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    return torch.linalg.vector_norm(flat, dim=1)


def clamp_box(x: torch.Tensor, bounds) -> torch.Tensor:
    """Clamp x in place to ``bounds``, an attack's checked (lo, hi) or None."""
    if bounds is None:
        return x
    lo, hi = bounds
    if math.isinf(lo) and math.isinf(hi):
        return x
    lo, hi = _validate.bounds_in(lo, hi, x.dtype)  # inside the bounds in x's dtype too
    return x.clamp_(min=None if math.isinf(lo) else lo, max=None if math.isinf(hi) else hi)


def loss_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits as a loss takes them: half-precision logits in float32."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def checked_grad(grad: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor):
    """(grad with the samples whose logits, loss or gradient are not finite zeroed, those
    samples, the other samples whose gradient is exactly zero): a NaN step would turn the
    whole sample into NaN; a zero step leaves it. The flags of AttackResult, per step."""
    batch = grad.shape[0]
    bad = ~(torch.isfinite(grad).reshape(batch, -1).all(dim=1) & torch.isfinite(logits).all(dim=1)
            & torch.isfinite(loss))
    keep = ~bad.reshape(-1, *([1] * (grad.dim() - 1)))
    grad = torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    return grad, bad, ~bad & (grad.reshape(batch, -1) == 0).all(dim=1)


def project_into_(v: torch.Tensor, center: torch.Tensor, eps_b: torch.Tensor, norm: str, bounds) -> torch.Tensor:
    """v onto the ``norm`` ball of radius eps_b (as _validate.budget_tensor makes it) around
    center and into the box, in place: pgd_step_'s projection with a zero step (scale into
    the ball, then clamp: the published attacks' P), exact in v's dtype. L1: the exact
    projection onto the L1 ball ∩ box (what the L1 attacks use)."""
    if norm == "l1":
        return ops.project_onto_(v, center, eps_b, "l1", bounds)
    return ops.pgd_step_(v, torch.zeros_like(v), center, eps_b, eps_b, norm, bounds)


def _check_indices(indices, images: torch.Tensor) -> torch.Tensor:
    """The [B] dataset indices of a call: positions in the batch by default."""
    batch = images.shape[0]
    if indices is None:
        return torch.arange(batch, device=images.device)
    if not isinstance(indices, torch.Tensor):
        try:
            indices = torch.as_tensor(indices)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"indices must be a [B] integer tensor, got {type(indices).__name__}") from None
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be integers (the samples' indices in the dataset), got {indices.dtype}")
    if indices.shape != (batch,):
        raise ValueError(f"indices must have shape [{batch}] (one per image), got {tuple(indices.shape)}")
    indices = indices.to(device=images.device, dtype=torch.int64)
    if batch and int(indices.min()) < 0:
        raise ValueError("indices must be non-negative")
    return indices


def _value_repr(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and _validate.has_values(value):
            return f"tensor({float(value):.6g})"
        if value.numel() <= 8 and _validate.has_values(value):
            return "tensor([" + ", ".join(f"{v:.6g}" for v in value.flatten().tolist()) + "])"
        if _validate.has_values(value) and value.numel() and value.is_floating_point():
            lo, hi = torch.aminmax(value)
            return f"tensor(shape={list(value.shape)}, min={float(lo):.6g}, max={float(hi):.6g})"
        return f"tensor(shape={list(value.shape)})"
    return repr(value)


def _model_repr(model) -> str:
    if isinstance(model, Normalize):
        return f"Normalize({_model_repr(model.model)}, {model.extra_repr()})"
    if isinstance(model, torch.nn.Module):
        return type(model).__name__
    return getattr(model, "__name__", type(model).__name__)


def _check_label_tensor(labels, name: str = "labels") -> None:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer torch.Tensor of class indices, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape [B] (one per image), got {tuple(labels.shape)}")


def random_targets(labels: torch.Tensor, num_classes: int, *, generator: torch.Generator | None = None,
                   seed: int | None = None, indices=None) -> torch.Tensor:
    """One target class per sample, uniform over the ``num_classes - 1`` classes other than
    its label (torchattacks' ``set_mode_targeted_random``): pass the result as the labels
    of an attack made with ``targeted=True``. [B] int64 on the labels' device.

    Randomness: torch's global RNG, or ``generator`` (a ``torch.Generator``), or ``seed``
    (advx's per-sample generator: each sample's target comes from (seed, its index in the
    dataset), ``indices`` as in ``atk(x, y, indices=...)``, default the positions in the
    batch), so a sample gets the same target in any batch.
    """
    _check_label_tensor(labels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (a target other than the label), got {num_classes!r}")
    num_classes = int(num_classes)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed (per-sample, batch-independent) or generator, not both")
    span = label_range(labels)
    if span is not None and (span[0] < 0 or span[1] >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{span[0]}, {span[1]}]")
    labels = labels.long()
    if seed is not None:
        seed = _validate.seed(seed)
        rows = _check_indices(indices, labels.reshape(-1, 1))
        offset = 1 + SampleRandom(seed, rows, "random_targets").integers(num_classes - 1)
    else:
        if indices is not None:
            raise ValueError("indices choose the per-sample streams of seed=...; pass seed too")
        device = generator.device if generator is not None else labels.device
        offset = torch.randint(1, num_classes, labels.shape, generator=generator, device=device)
    return (labels + offset.to(labels.device)) % num_classes


@torch.no_grad()
def least_likely_targets(model, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The class the model finds least likely for each image, ``argmin`` of its logits
    (torchattacks' ``set_mode_targeted_least_likely``): pass the result as the labels of an
    attack made with ``targeted=True``. ``labels`` (optional): never return a sample's own
    label (the least likely class among the others). The model runs in eval mode and gets
    its train/eval flags back. [B] int64 on the images' device."""
    check_model(model)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating point torch.Tensor, got "
                        f"{images.dtype if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.dim() < 2:
        raise ValueError(f"images must be batched [B, ...] with at least 2 dims, got shape {tuple(images.shape)}")
    if labels is not None:
        _check_label_tensor(labels)
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}")
    with eval_mode(model):
        logits = loss_logits(logits_of(model, images)).clone()
    if labels is not None:
        labels = labels.to(logits.device).long()
        check_labels(label_range(labels), logits.shape[1])
        if logits.shape[1] < 2:
            raise ValueError("a target other than the label needs a model with at least 2 classes")
        logits.scatter_(1, labels[:, None], float("inf"))
    return logits.argmin(dim=1)


class Attack:
    """Base class: ``adv = atk(images, labels)`` or ``res = atk.run(images, labels)``.

    Subclasses set ``name``, ``norm``, ``eps`` and implement ``_attack``.
    ``targeted=True`` means ``labels`` are the target classes. The model runs in eval
    mode during the attack (dropout off, batch-norm statistics untouched) and gets its
    own train/eval flags back afterwards.
    """

    name = "Attack"
    norm = "l2"
    eps = None
    _label_span = None  # (min, max) of the current call's labels, set by _check_inputs
    _indices = None  # the current call's dataset indices [B], set by _run
    _batch_size = None  # the working batch of a continuously batched attack (None: the call's batch)
    _early_exit = True  # a work item leaves the batch once it fooled the model
    _progress = None  # progress(fooled, survived): samples a streamed attack finished (evaluate's bar)

    def __init__(self, model, *, targeted: bool = False, bounds=(0.0, 1.0)):
        check_model(model)
        if not isinstance(targeted, bool):
            raise TypeError(f"targeted must be a bool, got {type(targeted).__name__}")
        if bounds is not None:
            bounds = _validate.bounds(bounds)
        self.model = model
        self.targeted = targeted
        self.bounds = bounds

    _unnormalized_model = None  # the model before set_normalization_used wrapped it

    def __repr__(self) -> str:
        """``PGD(model=DigitsCNN, eps=0.1, alpha=None, steps=10, norm='linf', ...)``: every
        setting the constructor takes, by its name, with the value the attack holds."""
        parts = [f"model={_model_repr(self.model)}"]
        seen = {"self", "model"}
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or cls is object:
                continue
            for name, param in inspect.signature(init).parameters.items():
                if name in seen or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                seen.add(name)
                if hasattr(self, name):
                    parts.append(f"{name}={_value_repr(getattr(self, name))}")
            break  # the class's own constructor names every setting it takes
        return f"{type(self).__name__}({', '.join(parts)})"

    def set_normalization_used(self, mean, std) -> "Attack":
        """torchattacks' ``atk.set_normalization_used(mean, std)``: the attack's model becomes
        ``advx.Normalize(model, mean, std)`` (on the model's device), so that a model trained
        on normalized inputs is attacked in pixel space [0, 1]: images, eps and the result
        are pixels. Calling it again replaces the normalization (it never stacks). Returns
        the attack. Wrapping the model yourself is the same thing; that wrapped model is
        also the one to evaluate clean accuracy with."""
        base = self._unnormalized_model if self._unnormalized_model is not None else self.model
        wrapped = Normalize(base, mean, std).to(default_device(base))
        self._unnormalized_model = base
        self.model = wrapped
        return self

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, indices=None) -> torch.Tensor:
        """The adversarial images. ``indices``: the samples' indices in the dataset, [B]
        integers (default: their positions in this batch); a seeded attack draws each
        sample's random numbers from (seed, its index), never from a stream the batch
        shares, so a sample's result does not depend on the batch it came in."""
        return self._run(images, labels, record_loss=False, report=False, indices=indices).adv

    def with_eps(self, eps) -> "Attack":
        """A copy of this attack with another budget (float or per-sample tensor)."""
        if self.eps is None:
            raise TypeError(f"{self.name} has no eps budget")
        other = copy.copy(self)
        other.eps = _validate.budget(eps, "eps")
        return other

    def run(self, images: torch.Tensor, labels: torch.Tensor, *, record_loss: bool = False,
            indices=None) -> AttackResult:
        """The attack with its per-sample record (see ``AttackResult``); ``indices`` as in
        ``atk(images, labels, indices=...)``."""
        return self._run(images, labels, record_loss=record_loss, report=True, indices=indices)

    def _run(self, images, labels, *, record_loss: bool, report: bool, indices=None, batch_size=None,
             early_exit: bool = True) -> AttackResult:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("attacks need gradients: call them outside torch.inference_mode()")
        images, labels = self._check_inputs(images, labels)
        self._indices = _check_indices(indices, images)
        self._batch_size, self._early_exit = batch_size, early_exit
        if images.shape[0] == 0:
            empty_b = images.new_zeros((0,))
            no = torch.zeros(0, dtype=torch.bool, device=images.device)
            return AttackResult(images.clone(), no, empty_b, empty_b.clone(),
                                torch.zeros(0, dtype=torch.int64, device=images.device),
                                zero_grad=no.clone(), nonfinite=no.clone())
        with eval_mode(self.model), torch.enable_grad():
            return self._attack(images, labels, record_loss, report)

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        raise NotImplementedError

    # -- pieces the subclasses use ------------------------------------------------

    def _check_inputs(self, images, labels):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images must be a floating point torch.Tensor, got "
                            f"{images.dtype if isinstance(images, torch.Tensor) else type(images).__name__}")
        if images.dim() < 2:
            raise ValueError(f"images must be batched [B, ...] with at least 2 dims, got shape {tuple(images.shape)}")
        if images.shape[0] and images[0].numel() == 0:
            raise ValueError(f"images has empty samples, shape {tuple(images.shape)}")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
                or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer torch.Tensor of class indices, got "
                            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(f"labels is on {labels.device} but images is on {images.device}")
        if images.numel():
            if not bool(torch.isfinite(images).all()):
                raise ValueError("images contains NaN or inf")
            if self.bounds is not None:
                lo, hi = self.bounds
                if float(images.min()) < lo or float(images.max()) > hi:
                    raise ValueError(
                        f"images must lie in bounds {self.bounds} (pixel space; wrap a model trained on "
                        f"normalized inputs in advx.Normalize), got range [{float(images.min())}, {float(images.max())}]")
        if isinstance(self.eps, torch.Tensor) and self.eps.dim() == 1 and self.eps.shape[0] != images.shape[0]:
            raise ValueError(f"eps has {self.eps.shape[0]} per-sample budgets but images has {images.shape[0]} samples")
        # read here, with the other checks, for _loop's check against the model's classes
        self._label_span = label_range(labels)
        return images.detach(), labels.detach().long()

    def _finished(self, fooled: torch.Tensor, survived: torch.Tensor) -> None:
        """Tell evaluate's progress bar how many samples this attack just finished: fooled,
        or done with every run unfooled (one host read, only when a bar listens)."""
        if self._progress is not None:
            self._progress(int(fooled), int(survived))

    def _random(self, stream: str) -> SampleRandom | None:
        """The per-sample generator of this call for ``stream`` (None without a seed: the
        global RNG, as torch.manual_seed left it); ``.subset(rows)`` for part of the batch."""
        seed = getattr(self, "seed", None)
        if seed is None:
            return None
        return SampleRandom(seed, self._indices, f"{self.name}/{stream}")

    def _objective(self, images, x_adv, logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to ascend, cross-entropy) per sample."""
        ce = F.cross_entropy(loss_logits(logits), labels, reduction="none")
        return (-ce if self.targeted else ce), ce

    @torch.no_grad()
    def _final_pass(self, images, adv, labels):
        """(logits, cross-entropy, success, non-finite logits or loss) of the result."""
        logits = logits_of(self.model, adv)
        _, ce = self._objective(images, adv, logits, labels)
        bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(ce))
        return logits, ce, self._success(logits, labels), bad

    def _success(self, logits, labels) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        fooled = pred == labels if self.targeted else pred != labels
        # argmax of a NaN row is 0: non-finite logits never count as success
        return fooled & torch.isfinite(logits).all(dim=1)

    def _gradient_at(self, images, x_adv, labels, *, first_pass: bool, mean_grad: bool):
        """One model pass at ``x_adv`` (a leaf that requires grad): (checked_grad's gradient
        of the objective and its non-finite and zero-gradient flags, success, cross-entropy),
        per sample. ``first_pass``: the call's first, which checks the labels against the
        model's classes (their range was read with the inputs: no host sync here)."""
        # x_adv may be kept in a wider dtype than the images (float32 for half-precision
        # images): the model sees the images' dtype, a differentiable cast (no-op if equal)
        logits = logits_of(self.model, x_adv.to(images.dtype))
        if first_pass:
            check_labels(self._label_span, logits.shape[1])
        objective, ce = self._objective(images, x_adv, logits, labels)
        (grad,) = torch.autograd.grad(objective.mean() if mean_grad else objective.sum(), x_adv)
        logits, ce = logits.detach(), ce.detach()
        grad, bad, zero = checked_grad(grad, logits, ce)
        return grad, bad, zero, self._success(logits, labels), ce

    def _loop(self, images, labels, x_adv, steps: int, update: Callable, *, record_loss: bool,
              early_stop: bool, mean_grad: bool, report: bool = True) -> AttackResult:
        """Ascend the objective from ``x_adv`` (a leaf that requires grad) for ``steps``
        updates, ``update(x_adv, grad)`` doing one in place.

        ``mean_grad``: the gradient of the batch mean (what sign and normalized-gradient
        steps of other attack libraries use; those steps do not depend on its scale),
        else of the sum, so that an optimizer's ``lr`` means the same for any batch size.
        ``report=False`` (``atk(images, labels)``) skips the final forward pass that only
        the per-sample record needs.
        """
        batch = images.shape[0]
        first = torch.full((batch,), -1, dtype=torch.int64, device=images.device)
        zero_grad = torch.zeros(batch, dtype=torch.bool, device=images.device)
        nonfinite = torch.zeros(batch, dtype=torch.bool, device=images.device)
        history = []
        done_steps = steps
        for step in range(steps):
            grad, bad, zero, success, ce = self._gradient_at(images, x_adv, labels, first_pass=step == 0,
                                                             mean_grad=mean_grad)
            nonfinite |= bad
            zero_grad |= zero
            first = torch.where(success & (first < 0), step, first)
            if record_loss:
                history.append(float(ce.mean()))
            if early_stop:
                done = first >= 0
                if bool(done.all()):
                    done_steps = step
                    break
                kept = x_adv.detach().clone()
            update(x_adv, grad)
            if early_stop:
                with torch.no_grad():
                    x_adv.copy_(torch.where(done.reshape(-1, *([1] * (images.dim() - 1))), kept, x_adv))
        adv = x_adv.detach()
        adv = adv.clone() if adv.dtype == images.dtype else adv.to(images.dtype)
        if not report:
            return AttackResult(adv=adv, success=None, loss=None, norm=None,
                                first_success=None, zero_grad=zero_grad, nonfinite=nonfinite)
        _, ce, success, bad = self._final_pass(images, adv, labels)
        nonfinite |= bad
        first = torch.where(success & (first < 0), done_steps, first)
        if record_loss and done_steps == steps:
            history.append(float(ce.mean()))
        return AttackResult(adv=adv, success=success, loss=ce.to(images.dtype),
                            norm=sample_norms(adv - images, self.norm), first_success=first,
                            loss_history=history, zero_grad=zero_grad, nonfinite=nonfinite)
