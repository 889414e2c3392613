"""Candidates for stability and the cheap ways to rule them out or settle them.

Serra, Yu, Kumar & Ramalingam (NeurIPS 2021, §4) take as candidates the units that never change
sign on the training data; the data are *witnesses*: a unit positive at some input in D is not
stably inactive. We add two more cheap, sound sources of witnesses (a witness is only ever an input in
D at which the float64 forward pass has the right sign): uniform points of D with the box corners
that maximise each unit's symbolic bound, and a projected gradient ascent on each open candidate's
pre-activation (the "attack" of adversarial robustness, Madry et al., ICLR 2018, here aiming at a
sign flip). Interval/symbolic bounds (``bounds.py``) settle the units whose sign they fix.
"""

from __future__ import annotations

import numpy as np
import torch

from prunelab.analysis.affine import AffineLayer
from prunelab.analysis.exact.bounds import LayerBounds
from prunelab.analysis.exact.domain import Box
from prunelab.analysis.exact.forward import preactivations, sign_witnesses
from prunelab.analysis.exact.milp import ACTIVE, FREE, INACTIVE

SEARCH_LR = 0.02  # Adam step, as a fraction of the mean box width
SEARCH_CHECK = 25  # steps between forward-pass checks of the iterates
SEARCH_ROWS = 4096  # most points ascended at once (fewer starts per candidate beyond that)


class Candidates:
    """Book-keeping per (layer k, unit i, direction d): open, or closed by a proof, a witness or as
    unresolved, each with a tag saying how. ``d = INACTIVE`` is the question "is the unit stably
    inactive?" (closed by a witness where g > 0), ``d = ACTIVE`` the question "stably active?"."""

    def __init__(self, widths: list[int]) -> None:
        self.proof = {d: [[""] * w for w in widths] for d in (INACTIVE, ACTIVE)}
        self.witness = {d: [[""] * w for w in widths] for d in (INACTIVE, ACTIVE)}
        self.unresolved = {d: [[""] * w for w in widths] for d in (INACTIVE, ACTIVE)}

    def is_open(self, d: int, k: int, i: int) -> bool:
        return not (self.proof[d][k][i] or self.witness[d][k][i] or self.unresolved[d][k][i])

    def open_candidates(self) -> list[tuple[int, int, int]]:
        out = []
        for k in range(len(self.proof[INACTIVE])):
            for i in range(len(self.proof[INACTIVE][k])):
                for d in (INACTIVE, ACTIVE):
                    if self.is_open(d, k, i):
                        out.append((k, i, d))
        return out

    def flips(self, d: int, g: np.ndarray) -> np.ndarray:
        return g > 0.0 if d == INACTIVE else g < 0.0


def settle_by_witnesses(state: Candidates, layers: list[AffineLayer], x: np.ndarray, tag: str) -> None:
    """Close every open candidate that some row of ``x`` (inputs in D) flips, tagging it ``tag``."""
    if len(x) == 0:
        return
    pos, neg = sign_witnesses(layers, x)
    for k in range(len(pos)):
        for i in np.flatnonzero(pos[k]):
            if state.is_open(INACTIVE, k, i):
                state.witness[INACTIVE][k][i] = tag
        for i in np.flatnonzero(neg[k]):
            if state.is_open(ACTIVE, k, i):
                state.witness[ACTIVE][k][i] = tag


def search_witnesses(
    state: Candidates, layers: list[AffineLayer], box: Box, pool: np.ndarray, starts: int, steps: int
) -> None:
    """Projected gradient ascent on each open candidate's flip (``g`` for inactive candidates, ``-g``
    for active ones) from the ``starts`` pool points closest to flipping it (fewer when there are many
    candidates: at most ``SEARCH_ROWS`` points in all). The ascent runs in float32; every
    ``SEARCH_CHECK`` steps the iterates, clipped to the box, are checked by a float64 forward pass
    (only real witnesses count) and the candidates they settle are dropped."""
    cands = state.open_candidates()
    if not cands or steps <= 0 or starts <= 0 or len(pool) == 0:
        return
    starts = max(1, min(starts, SEARCH_ROWS // len(cands)))
    depth = max(k for k, _, _ in cands) + 1
    g_pool = preactivations(layers[:depth], pool)
    rows, owner = [], []
    for c, (k, i, d) in enumerate(cands):
        score = g_pool[k][:, i] * (1.0 if d == INACTIVE else -1.0)
        best = np.argsort(-score)[:starts]
        rows.append(pool[best])
        owner += [c] * len(best)
    x_all, owner_all = np.concatenate(rows), np.array(owner)
    lower, upper = torch.from_numpy(box.lower).float(), torch.from_numpy(box.upper).float()
    weights = [(lay.weight.float(), lay.bias.float()) for lay in layers[:depth]]
    lr = SEARCH_LR * float(np.mean(box.upper - box.lower) or 1.0)
    done = 0
    while done < steps:
        alive = np.array([state.is_open(cands[c][2], cands[c][0], cands[c][1]) for c in owner_all])
        if not alive.any():
            return
        x_all, owner_all = x_all[alive], owner_all[alive]
        layer_of = torch.tensor([cands[c][0] for c in owner_all])
        index_of = torch.tensor([cands[c][1] for c in owner_all])
        sign = torch.tensor([1.0 if cands[c][2] == INACTIVE else -1.0 for c in owner_all])
        x = torch.from_numpy(x_all).float().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(min(SEARCH_CHECK, steps - done)):
            h, target = x, torch.zeros(len(x))
            for k, (w, b) in enumerate(weights):
                g = h @ w.T + b
                picked = g.gather(1, index_of.clamp(max=g.shape[1] - 1)[:, None])[:, 0]
                target = torch.where(layer_of == k, picked, target)
                h = torch.relu(g)
            opt.zero_grad()
            (-(sign * target).sum()).backward()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, upper), lower))
            done += 1
        x_all = box.clip(x.detach().double().numpy())
        settle_by_witnesses(state, layers, x_all, "search")


def settle_by_bounds(state: Candidates, bounds: list[LayerBounds]) -> list[np.ndarray]:
    """Close what the bounds prove (``U <= 0``: inactive, ``L >= 0``: active); return per layer the
    ``ACTIVE``/``INACTIVE``/``FREE`` status the MILPs use to model each unit."""
    fixed = []
    for k, b in enumerate(bounds):
        status = np.full(len(b.lower), FREE, dtype=np.int8)
        for i in range(len(b.lower)):
            if b.upper[i] <= 0.0:
                status[i] = INACTIVE
                tag = "interval" if b.interval_upper[i] <= 0.0 else "symbolic"
                state.proof[INACTIVE][k][i] = tag
                # its other direction is decided too: either also proven (g == 0) or irrelevant
                if b.lower[i] >= 0.0:
                    state.proof[ACTIVE][k][i] = tag
                elif state.is_open(ACTIVE, k, i):
                    state.witness[ACTIVE][k][i] = "irrelevant"
            elif b.lower[i] >= 0.0:
                status[i] = ACTIVE
                tag = "interval" if b.interval_lower[i] >= 0.0 else "symbolic"
                state.proof[ACTIVE][k][i] = tag
                if state.is_open(INACTIVE, k, i):
                    state.witness[INACTIVE][k][i] = "irrelevant"
        fixed.append(status)
    return fixed
