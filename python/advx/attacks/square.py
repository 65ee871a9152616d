"""Square (Andriushchenko et al., ECCV 2020): a score-based random search, forward passes
only. It needs no gradient, so a model that masks its gradients cannot hide from it: the
last attack of AutoAttack's cascade.

L-inf: start from vertical stripes of +-eps; each query changes one square window (its
side from the fraction p of the image, p shrinking on the published schedule; its
position and signs drawn per sample, as in the paper) to +-eps around the image and
keeps the change per sample if the margin loss z_y - max_{j != y} z_j went down.

L2: start from a grid of "pseudo-Gaussian" windows with random signs, scaled to norm eps;
each query moves the perturbation's mass between two windows of side s (the first gets a
new centered bump plus its old content, renormalized so the whole perturbation keeps
norm eps; the second is zeroed), then rescales to eps. The construction is the paper's.

The samples flow through a working batch (advx.attacks.stream): each carries its own best
point, margin and query count, so the rows of one forward pass are at different queries
(with windows of different sides); a sample leaves the batch once it is fooled or out of
queries and the next one takes its slot, so the passes run at the full working batch
until the queue runs dry and none is spent on a finished sample (without early exit a
fooled sample stays until out of queries, its result fixed: the work changes, not the
result).

Every random number of a sample (stripes, windows, signs) comes from (seed, its dataset
index, its query) through advx._rng, so its result does not depend on the batch it came
in, on the samples beside it or on the working batch size; without a seed, the seed
itself is drawn from torch's global RNG.
"""
from __future__ import annotations

import math

import torch

from .. import _validate
from .._runtime import logits_of
from .._rng import SampleRandom
from .base import Attack, AttackResult, check_labels, loss_logits, project_into_, sample_norms
from .stream import run_items

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

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        if images.dim() != 4:
            raise ValueError(f"Square needs images of shape [B, C, H, W], got {tuple(images.shape)}")
        batch = images.shape[0]
        eps = self.eps.to(images.device) if isinstance(self.eps, torch.Tensor) else self.eps
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2 ** 62, ()))
        searches = _Searches(self, images, labels, _validate.budget_tensor(eps, "eps", images), seed)
        # the queue in sample order; a sample has one item and nothing waits
        run_items(searches, torch.arange(batch, device=images.device), self._batch_size or batch)
        x_best, nonfinite = searches.adv, searches.nonfinite
        zero_grad = torch.zeros(batch, dtype=torch.bool, device=images.device)  # no gradients used
        if not report:
            return AttackResult(adv=x_best, success=None, loss=None, norm=None, first_success=None,
                                zero_grad=zero_grad, nonfinite=nonfinite)
        _, ce, success, bad = self._final_pass(images, x_best, labels)
        nonfinite |= bad
        return AttackResult(adv=x_best, success=success, loss=ce.to(images.dtype),
                            norm=sample_norms(x_best - images, self.norm),
                            first_success=torch.where(success, searches.first, -1),
                            zero_grad=zero_grad, nonfinite=nonfinite)


class _Searches:
    """Square's samples as work items of advx.attacks.stream (item b: sample b), each row
    with its own best point, margin, query count, first success: a row at query q draws
    its window side from the schedule at q and its numbers from draw q, whatever queries
    the other rows are at, so its search is the one it would make alone."""

    def __init__(self, atk: Square, images, labels, eps_b, seed: int):
        self.atk, self.images, self.labels, self.eps_b = atk, images, labels, eps_b
        self.early_exit, self.checked = atk._early_exit, False
        self.start_rng, self.window_rng, self.sign_rng = (SampleRandom(seed, atk._indices, f"{atk.name}/{part}")
                                                          for part in ("start", "window", "signs"))
        batch, c, h, w = images.shape
        device = images.device
        # the window side of every query, looked up per row (index: the query - 1)
        sides = [_side(atk.norm, p_schedule(atk.p_init, q, atk.queries), h, w) for q in range(max(atk.queries - 1, 1))]
        self.side = torch.tensor(sides, dtype=torch.int64, device=device)
        if atk.norm == "l2":
            # the bumps of the sides in use, padded into one table a row reads its own from
            distinct = sorted(set(sides))
            level = {s: k for k, s in enumerate(distinct)}
            self.level = torch.tensor([level[s] for s in sides], dtype=torch.int64, device=device)
            top = distinct[-1]
            self.bumps = torch.zeros((len(distinct), top, top), dtype=torch.float64, device=device)
            for k, s in enumerate(distinct):
                self.bumps[k, :s, :s] = _rectangles(s, s, device)
        self.adv = images.clone()
        self.first = torch.full((batch,), -1, dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=device)

    def _project(self, v, center, e):  # into the ball around center and the box, exact in the dtype
        return project_into_(v, center, e, self.atk.norm, self.atk.bounds)

    def admissible(self, items):
        everything = torch.ones_like(items, dtype=torch.bool)
        return everything, ~everything

    def admit(self, items):
        """The start points (not yet evaluated: query count 0)."""
        x, e = self.images[items], self.eps_b[items]
        e_x = e.to(x.dtype).reshape(-1, 1, 1, 1)
        rng = self.start_rng.subset(items)
        if self.atk.norm == "linf":
            x_best = self._project(x + e_x * rng.signs((x.shape[1], 1, x.shape[3]), dtype=x.dtype), x, e)
        else:
            start = _l2_init(x, rng).double()
            x_best = self._project((x.double() + e_x.double() * start / (_l2(start) + 1e-12)).to(x.dtype), x, e)
        n = items.shape[0]
        return {"item": items, "eps": e, "x_best": x_best,
                "m_best": torch.full((n,), math.inf, dtype=torch.float64, device=x.device),  # holds any margin exactly
                "q": torch.zeros(n, dtype=torch.int64, device=x.device),
                "first": torch.full((n,), -1, dtype=torch.int64, device=x.device),
                "nonfinite": torch.zeros(n, dtype=torch.bool, device=x.device)}

    def step(self, st):
        atk, sample, q, x_best = self.atk, st["item"], st["q"], st["x_best"]
        x0, e = self.images[sample], st["eps"]
        new = (q == 0).reshape(-1, 1, 1, 1)
        # every row's proposal for its own query q (a row at its start computes one too,
        # for the cost of not splitting the batch, and evaluates its start instead)
        at = (q - 1).clamp_min(0)
        side = self.side[at]
        _, c, h, w = x0.shape
        # the window corners: draws 4q + j, j even a row and odd a column (L-inf: one
        # window, L2: two), hashed in one pass over k stacked copies of the rows (each
        # number still depends on its (sample, draw) alone)
        k = 2 if atk.norm == "linf" else 4
        windows = self.window_rng.subset(sample.repeat(k))
        draws = 4 * q + torch.arange(k, device=q.device)[:, None]  # [k, n]
        highs = (torch.stack([h - side, w - side]).clamp_min(0) + 1).repeat(k // 2, 1)
        corners = windows.integers(highs.reshape(-1), draws.reshape(-1)).reshape(k, -1)
        signs = self.sign_rng.subset(sample).signs((c, 1, 1), q, dtype=x0.dtype)
        if atk.norm == "linf":
            step = e.to(x0.dtype).reshape(-1, 1, 1, 1) * signs
            x = torch.where(_window_mask(corners[0], corners[1], side, h, w), x0 + step, x_best)
        else:
            vh, vw, vh2, vw2 = corners
            x = self._l2_query(x0, x_best, e, side, self.level[at], ((vh, vw), (vh2, vw2)), signs)
        x = torch.where(new, x_best, self._project(x, x0, e))
        m, bad = atk._margin(x, self.labels[sample], check_labels_first=not self.checked)
        self.checked = True
        # a fooled row (kept without early exit) changes nothing more: its result stays
        # the one it would have left with
        live = st["m_best"] > 0
        better = live & (m < st["m_best"])
        st["x_best"] = torch.where(better.reshape(-1, 1, 1, 1), x, x_best)
        st["m_best"] = torch.where(better, m, st["m_best"])
        st["nonfinite"] |= live & bad
        st["first"] = torch.where(live & (m <= 0), q, st["first"])
        st["q"] = q + 1
        done = st["q"] >= atk.queries
        return (done | (st["m_best"] <= 0)) if self.early_exit else done

    def _l2_query(self, x_cur, x_best_cur, e_cur, s, level, windows, signs):
        """One L2 proposal per row (the paper's window move), each row with its own side
        ``s``, two windows (``windows``: [n] row and column of the first and the second)
        and signs."""
        b, c, h, w = x_cur.shape
        e = e_cur.to(torch.float64).reshape(-1, 1, 1, 1)
        delta = (x_best_cur - x_cur).double()
        (vh, vw), (vh2, vw2) = windows
        first, second = _window_mask(vh, vw, s, h, w), _window_mask(vh2, vw2, s, h, w)
        norm_window = (delta * first).pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = _l2(delta)
        norm_windows = _l2(delta * (first | second))
        bump = _place(self.bumps, level, s, vh, vw, first)  # [n, 1, h, w], zero outside
        new = (bump * signs.double() + delta / (1e-12 + norm_window)) * first
        budget = ((e ** 2 - norm_image ** 2).clamp_min(0) / c + norm_windows ** 2).sqrt()
        new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
        delta = torch.where(first, new, torch.where(second, 0.0, delta))
        return (x_cur.double() + e * delta / (_l2(delta) + 1e-12)).to(x_cur.dtype)

    def retire(self, st):
        sample = st["item"]
        fooled = st["m_best"] <= 0
        self.atk._finished(fooled.sum(), (~fooled).sum())
        self.adv[sample] = st["x_best"]
        self.first[sample] = st["first"]
        self.nonfinite[sample] = st["nonfinite"]


def _side(norm: str, p: float, h: int, w: int) -> int:
    """The window side for the fraction ``p`` of the image (L2: odd, for a centered bump)."""
    if norm == "linf":
        return min(max(int(round(math.sqrt(p * h * w))), 1), h - 1) if h > 1 else 1
    s = max(int(round(math.sqrt(p * h * w))), 3)
    return min(s + 1 - s % 2, h, w)  # odd, and at most the image


def _l2_init(images, rng):
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


def _window_mask(vh: torch.Tensor, vw: torch.Tensor, s: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[n, 1, h, w] bool: the s[b] x s[b] window at row vh[b], column vw[b] of each row."""
    rows = torch.arange(h, device=vh.device)
    cols = torch.arange(w, device=vh.device)
    s = s[:, None]
    in_rows = (rows[None, :] >= vh[:, None]) & (rows[None, :] < vh[:, None] + s)
    in_cols = (cols[None, :] >= vw[:, None]) & (cols[None, :] < vw[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _place(bumps: torch.Tensor, level: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor,
           window: torch.Tensor) -> torch.Tensor:
    """[n, 1, h, w]: row b's bump (``bumps[level[b]]``, of side s[b]) at row vh[b], column
    vw[b], zero outside that row's ``window`` (_window_mask's)."""
    top, (h, w) = bumps.shape[-1], window.shape[-2:]
    last = (s - 1)[:, None]
    i = torch.minimum((torch.arange(h, device=vh.device)[None, :] - vh[:, None]).clamp_min(0), last)  # [n, h]
    j = torch.minimum((torch.arange(w, device=vw.device)[None, :] - vw[:, None]).clamp_min(0), last)
    flat = (level[:, None, None] * top + i[:, :, None]) * top + j[:, None, :]
    return torch.where(window, bumps.reshape(-1)[flat][:, None], 0.0)
