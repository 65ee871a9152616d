"""Continuous batching: an attack's work items (a sample, or a (sample, target, restart)
run) flow through a working batch of fixed size. Every item carries its own state (its
iterate, step size, iteration count, ...) as rows of a dict of tensors; an item leaves
the batch the moment it is finished (fooled, or out of iterations) and the next item of
the queue takes its place, so every model call runs at the full batch size until the
queue runs dry and no pass is spent on a finished item.

A *stepper* (one per attack run) defines the items:

- ``admissible(items)``: two [n] bool masks over the whole queue, (may start now, drop):
  an item may be dropped (e.g. its sample is fooled already) or wait (its sample's
  previous run is still in the batch); the first free-slots-many startable items start;
- ``admit(items)``: their initial state, a dict of tensors with one row per item and the
  item ids under ``"item"`` (no model call);
- ``step(state)``: one model call on every row, updating ``state`` in place (entries may be
  replaced); returns the [n] bool mask of rows that are finished;
- ``retire(state)``: records the finished rows' results.

Because every operation of a step is per row, an item's result does not depend on which
items share its batch (with the per-sample random numbers of advx._rng and a model whose
per-sample outputs do not depend on the batch).
"""
from __future__ import annotations

import torch

__all__ = ["run_items", "take_rows", "cat_rows"]


def take_rows(state: dict, rows: torch.Tensor) -> dict:
    """The state of the items at ``rows``."""
    return {k: v[rows] for k, v in state.items()}


def cat_rows(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: torch.cat([a[k], b[k]]) for k in a}


def run_items(stepper, order: torch.Tensor, batch_size: int) -> int:
    """Run the items of ``order`` (ids, in queue order) through a working batch of
    ``batch_size`` rows; returns the number of model calls (steps)."""
    state, calls = None, 0
    while True:
        active = 0 if state is None else int(state["item"].shape[0])
        if active < batch_size and order.numel():
            # one look at the whole queue per step: the first startable items fill the free slots
            now, drop = stepper.admissible(order)
            start = now.nonzero()[:, 0][:batch_size - active]
            if start.numel() or bool(drop.any()):
                leave = drop.clone()
                leave[start] = True
                started, order = order[start], order[~leave]
                if started.numel():
                    state = cat_rows(state, stepper.admit(started))
                    active += int(started.numel())
        if active == 0:
            return calls
        done = stepper.step(state)
        calls += 1
        gone = done.nonzero()[:, 0]  # which rows leave: read on the host
        if gone.numel():
            stepper.retire(take_rows(state, gone))
            state = None if gone.numel() == active else take_rows(state, (~done).nonzero()[:, 0])
