"""Cheap pre-activation bounds over a box: interval arithmetic, then symbolic (linear) bounds.

For every hidden unit i of layer k we bound its pre-activation ``g_i(x)`` over the box D:

* **Interval bounds** (interval bound propagation, e.g. Gowal et al. 2018): ``[L, U]`` of
  ``W h + b`` from the intervals of ``h``; exact for the first layer (a linear function over a box).
* **Symbolic bounds**, the back-substitution of DeepPoly (Singh, Gehr, Püschel & Vechev, POPL 2019,
  §4) / CROWN (Zhang et al., NeurIPS 2018, Thm 3.2): every earlier unstable ReLU is replaced by linear
  bounds ``lam*g <= relu(g) <= U/(U-L) * (g - L)`` and the resulting linear function of x is
  maximised/minimised over the box in closed form. The lower slope ``lam`` is 1 if ``U > -L`` else 0
  (DeepPoly's area heuristic, CROWN's "adaptive" choice). We take the intersection of both bounds.

The bounds settle the units with ``U <= 0`` (stably inactive) or ``L >= 0`` (stably active) and give
the big-M constants of the MILP (Serra, Yu, Kumar & Ramalingam 2021, §3). The box corner that
maximises (minimises) each unit's linear upper (lower) bound is kept as a candidate *witness*: for the
first layer it is exact, deeper it is a good guess, and a forward pass decides.

Floating point: bounds are computed in float64 and padded outwards by ``1e-10`` times the magnitude
of the terms summed, so a unit is claimed stable only with a margin far above float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunelab.analysis.affine import AffineLayer
from prunelab.analysis.exact.domain import Box

PAD = 1e-10


@dataclass
class LayerBounds:
    """Bounds of one hidden layer's pre-activations over the box.

    ``lower``/``upper``: the tightest bounds (interval ∩ symbolic); ``interval_lower``/
    ``interval_upper``: pure interval arithmetic from the box (used to say which proof settled a unit);
    ``upper_corner``/``lower_corner``: (width, n_inputs) box corners maximising / minimising each unit's
    linear bound (candidate witnesses).
    """

    lower: np.ndarray
    upper: np.ndarray
    interval_lower: np.ndarray
    interval_upper: np.ndarray
    upper_corner: np.ndarray
    lower_corner: np.ndarray

    @property
    def inactive(self) -> np.ndarray:
        return self.upper <= 0.0

    @property
    def active(self) -> np.ndarray:
        return (self.lower >= 0.0) & ~self.inactive


def _weights(layer: AffineLayer) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.numpy(), layer.bias.numpy()


def _interval(w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wp, wn = np.maximum(w, 0.0), np.minimum(w, 0.0)
    low = wp @ lo + wn @ hi + b
    high = wp @ hi + wn @ lo + b
    pad = PAD * (np.abs(w) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(b))
    return low - pad, high + pad


def _relaxation(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes/offsets of ``sl*g <= relu(g) <= su*g + tu`` valid for g in [low, high]."""
    active = low >= 0.0
    unstable = (low < 0.0) & (high > 0.0)
    su = active.astype(np.float64)
    tu = np.zeros_like(low)
    denom = np.where(unstable, high - low, 1.0)
    su = np.where(unstable, high / denom, su)
    tu = np.where(unstable, -low * high / denom, tu)
    sl = (active | (unstable & (high > -low))).astype(np.float64)
    return su, tu, sl


def _symbolic(
    layers: list[AffineLayer], k: int, relax: list[tuple[np.ndarray, np.ndarray, np.ndarray]], box: Box
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Back-substitute layer k's pre-activation to the input; return (low, high, A_low, A_high)."""
    w, b = _weights(layers[k])
    au, cu = w.copy(), b.copy()
    al, cl = w.copy(), b.copy()
    mag_u = np.abs(b)
    mag_l = np.abs(b)
    for j in range(k - 1, -1, -1):
        su, tu, sl = relax[j]
        aup, aun = np.maximum(au, 0.0), np.minimum(au, 0.0)
        cu = cu + aup @ tu
        mag_u = mag_u + np.abs(aup) @ np.abs(tu)
        au = aup * su + aun * sl
        alp, aln = np.maximum(al, 0.0), np.minimum(al, 0.0)
        cl = cl + aln @ tu
        mag_l = mag_l + np.abs(aln) @ np.abs(tu)
        al = alp * sl + aln * su
        wj, bj = _weights(layers[j])
        cu, cl = cu + au @ bj, cl + al @ bj
        mag_u = mag_u + np.abs(au) @ np.abs(bj)
        mag_l = mag_l + np.abs(al) @ np.abs(bj)
        au, al = au @ wj, al @ wj
    xmax = np.maximum(np.abs(box.lower), np.abs(box.upper))
    high = cu + np.maximum(au, 0.0) @ box.upper + np.minimum(au, 0.0) @ box.lower
    low = cl + np.maximum(al, 0.0) @ box.lower + np.minimum(al, 0.0) @ box.upper
    high = high + PAD * (mag_u + np.abs(au) @ xmax)
    low = low - PAD * (mag_l + np.abs(al) @ xmax)
    return low, high, al, au


def compute_bounds(layers: list[AffineLayer], box: Box) -> list[LayerBounds]:
    """Interval and symbolic bounds for every hidden layer (all layers but the last)."""
    out: list[LayerBounds] = []
    relax: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    ilo, ihi = box.lower, box.upper  # pure interval chain
    tlo, thi = box.lower, box.upper  # interval chain fed by the tightest bounds so far
    for k in range(len(layers) - 1):
        w, b = _weights(layers[k])
        int_low, int_high = _interval(w, b, ilo, ihi)
        t_low, t_high = _interval(w, b, tlo, thi)
        s_low, s_high, al, au = _symbolic(layers, k, relax, box)
        low = np.maximum.reduce([int_low, t_low, s_low])
        high = np.minimum.reduce([int_high, t_high, s_high])
        upper_corner = np.where(au > 0.0, box.upper, box.lower)
        lower_corner = np.where(al > 0.0, box.lower, box.upper)
        out.append(LayerBounds(low, high, int_low, int_high, upper_corner, lower_corner))
        relax.append(_relaxation(low, high))
        ilo, ihi = np.maximum(int_low, 0.0), np.maximum(int_high, 0.0)
        tlo, thi = np.maximum(low, 0.0), np.maximum(high, 0.0)
    return out
