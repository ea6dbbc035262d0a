"""The discrete architecture space that Bayesian peer sizing searches.

Bounds come from the teacher: 1…L layers, head sizes and FFN widths on grids up to the
teacher's. Two spaces:

- **efficient** (the default when the teacher is wide enough): widths (hidden sizes) that are
  multiples of ``width_multiple`` (32 on CPUs, 64 on GPUs), head sizes of 16, 32, 64 … that
  divide that multiple (so heads = width / head size), and FFN widths on a grid of multiples of
  8 or more. Matrix products of such shapes run near the hardware's pace; heads of 4–12 and
  widths like 48 or 72 do not. Shapes deeper than ``width / 16`` layers are penalised in the
  search (narrow-and-deep peers compute badly and learn no better at this size).
- **any**: 1…H heads and every grid head size, what the seed card describes, used for a
  target the efficient space cannot reach within 1% (a small teacher, an odd target).

Every point is a valid config of the family (hidden = heads × head size by construction). The
spaces are small enough to enumerate, which gives the exhaustive optimum that the search is
tested against and the smallest buildable model (for rejecting impossible targets early).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wml_framework.api import shape_string

__all__ = ["ARCH", "SHAPE", "STEPS", "MIN_VALUES", "VARIABLES", "SizingSpace", "arch_key", "arch_string", "grid_step",
           "head_dim_multiple", "key_of", "shape_key"]

#: grid steps tried for head sizes and FFN widths, coarsest first, and how many grid values
#: each should at least offer (small teachers get a finer grid, so targets stay reachable)
STEPS = (8, 4, 2, 1)
MIN_VALUES = {"head_dim": 8, "ffn": 64}
#: the shape's keys, in the order of ``SizingSpace.grid``'s columns
VARIABLES = ("n_layer", "n_head", "head_dim", "ffn")
#: efficient shapes: head sizes from 16 on, at most width / 16 layers, FFN widths a multiple of 8
MIN_HEAD_DIM, WIDTH_PER_LAYER, FFN_STEP = 16, 16, 8
ANY, EFFICIENT = "any", "efficient"
#: how two peers' shapes may be told apart: ``ARCH`` by layers, heads and width (what the seed card
#: varies for diversity), ``SHAPE`` by any of layers, heads, head size and FFN width
ARCH, SHAPE = "layers/heads/width", "shape"


@dataclass
class SizingSpace:
    """Integer grid per search variable; a point is one index per variable into ``values``."""

    family: object
    teacher_config: object
    values: dict
    kind: str = ANY

    @classmethod
    def from_teacher(cls, family, teacher_config, width_multiple: int = 1) -> "SizingSpace":
        """The ``efficient`` space for ``width_multiple`` > 1 when the teacher admits one, else ``any``."""
        s = family.shape(teacher_config)
        multiple = head_dim_multiple(family, teacher_config)
        f_step = grid_step(s["ffn"], MIN_VALUES["ffn"])
        ffn = np.arange(f_step, s["ffn"] + 1, f_step)
        layers = np.arange(1, s["n_layer"] + 1)
        if width_multiple > 1:
            head_dims = [d for d in (16, 32, 64, 128, 256) if d <= min(s["head_dim"], width_multiple)
                         and width_multiple % d == 0 and d % multiple == 0]
            hidden = s["n_head"] * s["head_dim"]
            if head_dims and hidden >= width_multiple:
                e_step = max(FFN_STEP, f_step)
                values = dict(n_layer=layers, width=np.arange(width_multiple, hidden + 1, width_multiple),
                              head_dim=np.array(head_dims), ffn=np.arange(e_step, s["ffn"] + 1, e_step))
                return cls(family, teacher_config, values, EFFICIENT)
        d_step = grid_step(s["head_dim"], MIN_VALUES["head_dim"], multiple)
        values = dict(n_layer=layers, n_head=np.arange(1, s["n_head"] + 1),
                      head_dim=np.arange(d_step, s["head_dim"] + 1, d_step), ffn=ffn)
        return cls(family, teacher_config, values, ANY)

    # -- points ---------------------------------------------------------------------------------
    @property
    def variables(self) -> tuple:
        return tuple(self.values)

    def pbounds(self) -> dict:
        """``bayes_opt`` bounds: one integer index per variable."""
        return {k: (0, len(self.values[k]) - 1, int) for k in self.variables}

    def shape(self, **index) -> dict:
        """The architecture at integer indices (clipped into range)."""
        v = {k: int(self.values[k][min(max(int(round(index[k])), 0), len(self.values[k]) - 1)])
             for k in self.variables}
        return self._shape(v)

    def _shape(self, v: dict) -> dict:
        if self.kind == EFFICIENT:
            out = dict(n_layer=v["n_layer"], n_head=v["width"] // v["head_dim"], head_dim=v["head_dim"], ffn=v["ffn"])
        else:
            out = {k: v[k] for k in VARIABLES}
        out["hidden"] = out["n_head"] * out["head_dim"]
        return out

    def well_proportioned(self, shape: dict) -> bool:
        """Not deeper than width / 16 layers (always true in the ``any`` space, which has no such rule)."""
        return self.kind == ANY or shape["hidden"] >= WIDTH_PER_LAYER * shape["n_layer"]

    def count(self, shape: dict) -> int:
        return int(self.family.count_shapes(self.teacher_config, n_layer=shape["n_layer"], n_head=shape["n_head"],
                                            head_dim=shape["head_dim"], ffn=shape["ffn"]))

    def config(self, shape: dict):
        """The peer's Hugging Face config: the shape, everything else from the teacher."""
        t = self.teacher_config
        return self.family.make_config(
            vocab_size=t.vocab_size, n_layer=shape["n_layer"], n_head=shape["n_head"], head_dim=shape["head_dim"],
            ffn=shape["ffn"], max_positions=self.family.max_positions(t), bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id, base=t)

    # -- the whole space --------------------------------------------------------------------------
    @cached_property
    def grid(self) -> tuple:
        """``(shapes (n, 4) int array in VARIABLES order, counts (n,))`` for every point."""
        mesh = np.meshgrid(*(self.values[k] for k in self.variables), indexing="ij")
        cols = dict(zip(self.variables, (m.reshape(-1) for m in mesh)))
        if self.kind == EFFICIENT:
            cols["n_head"] = cols.pop("width") // cols["head_dim"]
        shapes = np.stack([cols[k] for k in VARIABLES], axis=1)
        counts = self.family.count_shapes(self.teacher_config, n_layer=shapes[:, 0], n_head=shapes[:, 1],
                                          head_dim=shapes[:, 2], ffn=shapes[:, 3])
        return shapes, np.asarray(counts, dtype=np.int64)

    @cached_property
    def _allowed(self) -> np.ndarray:
        """Grid points that are well proportioned (all of them in the ``any`` space)."""
        shapes, _ = self.grid
        if self.kind == ANY:
            return np.ones(len(shapes), dtype=bool)
        return shapes[:, 1] * shapes[:, 2] >= WIDTH_PER_LAYER * shapes[:, 0]

    @property
    def min_parameters(self) -> int:
        """Parameters of the smallest allowed model in the space."""
        _, counts = self.grid
        return int(counts[self._allowed].min())

    def exhaustive_best(self, target: int, exclude=(), by: str = SHAPE) -> tuple[dict, float]:
        """The best allowed shape by exhaustive enumeration, skipping the shapes that equal one of
        ``exclude`` (shape dicts) by ``by`` (``SHAPE``: the whole shape; ``ARCH``: layers, heads and
        width): the reference the Bayesian search is judged by. The error is ``inf`` when every
        allowed shape is excluded."""
        shapes, counts = self.grid
        err = np.where(self._allowed, np.abs(counts - target) / target, np.inf)
        if exclude:
            columns = _columns(shapes, by)
            for shape in exclude:
                row = _columns(np.array([[shape[k] for k in VARIABLES]]), by)[0]
                err = np.where((columns == row).all(axis=1), np.inf, err)
        i = int(np.argmin(err))
        best = dict(zip(VARIABLES, (int(v) for v in shapes[i])))
        best["hidden"] = best["n_head"] * best["head_dim"]
        return best, float(err[i])


def _columns(shapes: np.ndarray, by: str) -> np.ndarray:
    """The columns of ``(n, 4)`` shapes (``VARIABLES`` order) that identify them by ``by``."""
    if by == SHAPE:
        return shapes
    if by == ARCH:
        return np.stack([shapes[:, 0], shapes[:, 1], shapes[:, 1] * shapes[:, 2]], axis=1)
    raise ValueError(f"shapes are told apart by {SHAPE!r} or {ARCH!r}, not {by!r}")


def head_dim_multiple(family, config) -> int:
    """Head sizes of peers of ``config`` must be multiples of this: the family's
    ``head_dim_multiple_for(config)`` where it has one (it depends on the config, e.g. a partial
    rotary factor), else its ``head_dim_multiple``."""
    for_config = getattr(family, "head_dim_multiple_for", None)
    return int(for_config(config)) if callable(for_config) else int(family.head_dim_multiple)


def grid_step(top: int, min_values: int, multiple: int = 1) -> int:
    """The coarsest step of ``STEPS`` (a multiple of ``multiple``) that divides ``top`` and leaves
    ``min_values`` grid values, else the finest such step."""
    dividing = [s for s in STEPS if top % s == 0 and s % multiple == 0] or [multiple]
    return next((s for s in dividing if top // s >= min_values), dividing[-1])


def shape_key(shape: dict) -> str:
    """A shape's identity for the diversity term (the table's shape string)."""
    return shape_string(shape)


def arch_key(shape: dict) -> str:
    """What the seed card varies for diversity: layers, heads and width (``L2·H4·W128``)."""
    return f"L{shape['n_layer']}·H{shape['n_head']}·W{shape['n_head'] * shape['head_dim']}"


def arch_string(shape: dict) -> str:
    """``arch_key`` in words, for the init table's notes: ``2 layers, 4 heads, width 128``."""
    layers, heads = shape["n_layer"], shape["n_head"]
    return (f"{layers} layer{'s' if layers != 1 else ''}, {heads} head{'s' if heads != 1 else ''}, "
            f"width {heads * shape['head_dim']}")


def key_of(by: str):
    """The identity function of ``by`` (``SHAPE`` or ``ARCH``)."""
    keys = {SHAPE: shape_key, ARCH: arch_key}
    if by not in keys:
        raise ValueError(f"shapes are told apart by {SHAPE!r} or {ARCH!r}, not {by!r}")
    return keys[by]
