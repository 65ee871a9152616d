"""Square (Andriushchenko et al., ECCV 2020): a score-based random search, forward passes
only. It needs no gradient, so a model that masks its gradients cannot hide from it: the
last attack of AutoAttack's cascade.

L-inf: start from vertical stripes of +-eps; each query changes one square window (its
side from the fraction p of the image, p shrinking on the published schedule; its
position and signs drawn per sample, as in the paper) to +-eps around the image and
keeps the change per sample if the margin loss z_y - max_{j != y} z_j went down. Only
samples not yet fooled are queried.

L2: start from a grid of "pseudo-Gaussian" windows with random signs, scaled to norm eps;
each query moves the perturbation's mass between two windows of side s (the first gets a
new centered bump plus its old content, renormalized so the whole perturbation keeps
norm eps; the second is zeroed), then rescales to eps. The construction is the paper's.

Every random number of a sample (stripes, windows, signs) comes from (seed, its dataset
index, the query) through advx._rng, so its result does not depend on the batch it came
in; without a seed, the seed itself is drawn from torch's global RNG.
"""
from __future__ import annotations

import math

import torch

from .. import _validate
from .._runtime import logits_of
from .._rng import SampleRandom
from .base import Attack, AttackResult, check_labels, loss_logits, project_into_, sample_norms

__all__ = ["Square", "p_schedule"]


def p_schedule(p_init: float, query: int, queries: int) -> float:
    """The fraction of pixels a window covers at ``query`` of ``queries`` (the schedule is
    given for 10000 queries and rescaled)."""
    it = int(query / queries * 10000)
    for limit, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= limit:
            return p_init / div
    return p_init / 512


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample: <= 0 means misclassified."""
    logits = loss_logits(logits)
    z_y = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return z_y - others.amax(dim=1)


class Square(Attack):
    """``Square(model, eps, norm="linf", queries=5000, p_init=0.8, seed=None)``: images are
    [B, C, H, W]; ``queries`` counts forward passes per sample (the first is the start)."""

    name = "Square"

    def __init__(self, model, eps, norm: str = "linf", queries: int = 5000, p_init: float = 0.8, *, seed=None,
                 bounds=(0.0, 1.0)):
        super().__init__(model, bounds=bounds)
        self.eps = _validate.budget(eps, "eps")
        self.norm = _validate.norm(norm)
        self.queries = _validate.steps(queries)
        if not 0.0 < float(p_init) <= 1.0:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init}")
        self.p_init = float(p_init)
        self.seed = _validate.seed(seed)

    def _margin(self, x, labels, *, check_labels_first: bool = False):
        with torch.no_grad():
            logits = logits_of(self.model, x)
        if check_labels_first:  # before the gather reads logits at the labels
            check_labels(self._label_span, logits.shape[1])
        m = margin(logits, labels)
        # a non-finite margin is never an improvement and never a success
        return torch.where(torch.isfinite(m), m, torch.full_like(m, math.inf)), ~torch.isfinite(logits).all(dim=1)

    def _l2_init(self, images, rng):
        """The L2 start: a grid of pseudo-Gaussian windows of side h // 5 with random signs
        and orientations per sample."""
        batch, c, h, w = images.shape
        delta = torch.zeros_like(images)
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        bump = _pseudo_gaussian(s, images)
        k = 0
        for vh in range(start, h, s):
            for vw in range(start, w, s):
                flip = (rng.uniform((), 2 * k, dtype=torch.float64) > 0.5).reshape(-1, 1, 1)
                oriented = torch.where(flip, bump.t(), bump)  # [B, s, s]
                signs = rng.signs((c, 1, 1), 2 * k + 1, dtype=images.dtype)
                patch = delta[:, :, vh:vh + s, vw:vw + s]
                patch += oriented[:, None, :patch.shape[2], :patch.shape[3]] * signs
                k += 1
        return delta

    def _l2_query(self, x_cur, x_best_cur, e_cur, s, windows, signs):
        """One L2 proposal for the samples being queried (the paper's window move), each
        sample with its own two windows (``windows``: [B] row and column of the first and
        the second) and signs."""
        b, c, h, w = x_cur.shape
        e = e_cur.to(torch.float64).reshape(-1, 1, 1, 1)
        delta = (x_best_cur - x_cur).double()
        (vh, vw), (vh2, vw2) = windows
        first, second = _window_mask(vh, vw, s, h, w), _window_mask(vh2, vw2, s, h, w)
        norm_window = (delta * first).pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = _l2(delta)
        norm_windows = _l2(delta * (first | second))
        bump = _place(_rectangles(s, s, x_cur.device), vh, vw, first)  # [B, 1, h, w], zero outside
        new = (bump * signs.double() + delta / (1e-12 + norm_window)) * first
        budget = ((e ** 2 - norm_image ** 2).clamp_min(0) / c + norm_windows ** 2).sqrt()
        new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
        delta = torch.where(first, new, torch.where(second, 0.0, delta))
        return (x_cur.double() + e * delta / (_l2(delta) + 1e-12)).to(x_cur.dtype)

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        if images.dim() != 4:
            raise ValueError(f"Square needs images of shape [B, C, H, W], got {tuple(images.shape)}")
        batch, c, h, w = images.shape
        eps = self.eps.to(images.device) if isinstance(self.eps, torch.Tensor) else self.eps
        eps_b = _validate.budget_tensor(eps, "eps", images)
        eps_x = eps_b.to(images.dtype).reshape(-1, 1, 1, 1)
        # per-sample draws (no stream shared by the batch, no host read per query)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2 ** 62, ()))
        start_rng, window_rng, sign_rng = (SampleRandom(seed, self._indices, f"{self.name}/{part}")
                                           for part in ("start", "window", "signs"))

        def project(v, center, e):  # into the ball around center and the box, exact in the dtype
            return project_into_(v, center, e, self.norm, self.bounds)

        if self.norm == "linf":
            stripes = start_rng.signs((c, 1, w), dtype=images.dtype)
            x_best = project(images + eps_x * stripes, images, eps_b)
        else:
            start = self._l2_init(images, start_rng).double()
            x_best = project((images.double() + eps_x.double() * start / (_l2(start) + 1e-12)).to(images.dtype),
                             images, eps_b)
        m_best, nonfinite = self._margin(x_best, labels, check_labels_first=True)
        first = torch.where(m_best <= 0, 0, -1)
        for q in range(1, self.queries):
            left = (m_best > 0).nonzero()[:, 0]
            if left.numel() == 0:
                break
            p = p_schedule(self.p_init, q - 1, self.queries)
            x_cur, e_cur = images[left], eps_b[left]
            windows, signs = window_rng.subset(left), sign_rng.subset(left)
            if self.norm == "linf":
                s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1) if h > 1 else 1
                vh, vw = windows.integers(max(h - s, 0) + 1, 4 * q), windows.integers(max(w - s, 0) + 1, 4 * q + 1)
                step = e_cur.to(images.dtype).reshape(-1, 1, 1, 1) * signs.signs((c, 1, 1), q, dtype=images.dtype)
                x_new = torch.where(_window_mask(vh, vw, s, h, w), x_cur + step, x_best[left])
            else:
                s = max(int(round(math.sqrt(p * h * w))), 3)
                s = min(s + 1 - s % 2, h, w)  # odd, and at most the image
                corners = [(windows.integers(max(h - s, 0) + 1, 4 * q + 2 * k),
                            windows.integers(max(w - s, 0) + 1, 4 * q + 2 * k + 1)) for k in range(2)]
                x_new = self._l2_query(x_cur, x_best[left], e_cur, s, corners,
                                       signs.signs((c, 1, 1), q, dtype=images.dtype))
            x_new = project(x_new, x_cur, e_cur)
            m_new, bad = self._margin(x_new, labels[left])
            nonfinite[left] |= bad
            better = m_new < m_best[left]
            x_best[left] = torch.where(better.reshape(-1, 1, 1, 1), x_new, x_best[left])
            m_best[left] = torch.where(better, m_new, m_best[left])
            first[left] = torch.where((m_new <= 0) & (first[left] < 0), q, first[left])
        zero_grad = torch.zeros(batch, dtype=torch.bool, device=images.device)  # no gradients used
        if not report:
            return AttackResult(adv=x_best, success=None, loss=None, norm=None, first_success=None,
                                zero_grad=zero_grad, nonfinite=nonfinite)
        _, ce, success, bad = self._final_pass(images, x_best, labels)
        nonfinite |= bad
        return AttackResult(adv=x_best, success=success, loss=ce.to(images.dtype),
                            norm=sample_norms(x_best - images, self.norm), first_success=torch.where(success, first, -1),
                            zero_grad=zero_grad, nonfinite=nonfinite)


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped [B, 1, 1, 1]."""
    return v.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


def _rectangles(x: int, y: int, device) -> torch.Tensor:
    """The paper's centered bump: nested rectangles weighted 1 / (k + 1)^2, unit L2 norm."""
    delta = torch.zeros((x, y), dtype=torch.float64, device=device)
    cx, cy = x // 2, y // 2
    for k in range(max(x // 2 + 1, y // 2 + 1)):
        delta[max(cx - k, 0):min(cx - k + 2 * k + 1, x), max(cy - k, 0):min(cy - k + 2 * k + 1, y)] += 1.0 / (k + 1) ** 2
    return delta / delta.pow(2).sum().sqrt()


def _pseudo_gaussian(s: int, like: torch.Tensor) -> torch.Tensor:
    """Two opposite bumps stacked (the top half positive); the caller transposes it at
    random per sample."""
    delta = torch.zeros((s, s), dtype=torch.float64, device=like.device)
    if s >= 2:
        delta[:s // 2] = _rectangles(s // 2, s, like.device)
        delta[s // 2:] = -_rectangles(s - s // 2, s, like.device)
    else:
        delta[:] = 1.0
    delta = delta / delta.pow(2).sum().sqrt()
    return delta.to(like.dtype)


def _window_mask(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """[B, 1, h, w] bool: the s x s window at row vh[b], column vw[b] of each sample."""
    rows = torch.arange(h, device=vh.device)
    cols = torch.arange(w, device=vh.device)
    in_rows = (rows[None, :] >= vh[:, None]) & (rows[None, :] < vh[:, None] + s)
    in_cols = (cols[None, :] >= vw[:, None]) & (cols[None, :] < vw[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _place(patch: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w]: the [s, s] ``patch`` at row vh[b], column vw[b] of each sample, zero
    outside that sample's ``window`` (_window_mask's)."""
    s, (h, w) = patch.shape[0], window.shape[-2:]
    i = (torch.arange(h, device=vh.device)[None, :] - vh[:, None]).clamp(0, s - 1)  # [B, h]
    j = (torch.arange(w, device=vw.device)[None, :] - vw[:, None]).clamp(0, s - 1)
    return torch.where(window, patch[i[:, :, None], j[:, None, :]][:, None], 0.0)
