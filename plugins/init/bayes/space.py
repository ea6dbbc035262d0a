"""The discrete architecture space that Bayesian peer sizing searches.

Bounds come from the teacher: 1…L layers, 1…H heads, head sizes on a grid up to the teacher's
head size, FFN widths on a grid up to the teacher's FFN width. Every point is a valid config
of the family (hidden = heads × head size by construction). The space is small enough to
enumerate, which gives the exhaustive optimum that the search is tested against and the
smallest buildable model (for rejecting impossible targets before any search).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wml_framework.api import shape_string

#: grid steps tried for head sizes and FFN widths, coarsest first, and how many grid values
#: each should at least offer (small teachers get a finer grid, so targets stay reachable)
STEPS = (8, 4, 2, 1)
MIN_VALUES = {"head_dim": 8, "ffn": 64}
VARIABLES = ("n_layer", "n_head", "head_dim", "ffn")


@dataclass
class SizingSpace:
    """Integer grid per variable; a point is four indices into ``values``."""

    family: object
    teacher_config: object
    values: dict

    @classmethod
    def from_teacher(cls, family, teacher_config) -> "SizingSpace":
        s = family.shape(teacher_config)
        d_step = grid_step(s["head_dim"], MIN_VALUES["head_dim"], family.head_dim_multiple)
        f_step = grid_step(s["ffn"], MIN_VALUES["ffn"])
        values = dict(
            n_layer=np.arange(1, s["n_layer"] + 1),
            n_head=np.arange(1, s["n_head"] + 1),
            head_dim=np.arange(d_step, s["head_dim"] + 1, d_step),
            ffn=np.arange(f_step, s["ffn"] + 1, f_step),
        )
        return cls(family, teacher_config, values)

    # -- points ---------------------------------------------------------------------------------
    def pbounds(self) -> dict:
        """``bayes_opt`` bounds: one integer index per variable."""
        return {k: (0, len(self.values[k]) - 1, int) for k in VARIABLES}

    def shape(self, **index) -> dict:
        """The architecture at integer indices (clipped into range)."""
        out = {k: int(self.values[k][min(max(int(round(index[k])), 0), len(self.values[k]) - 1)])
               for k in VARIABLES}
        out["hidden"] = out["n_head"] * out["head_dim"]
        return out

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
        mesh = np.meshgrid(*(self.values[k] for k in VARIABLES), indexing="ij")
        shapes = np.stack([m.reshape(-1) for m in mesh], axis=1)
        counts = self.family.count_shapes(self.teacher_config, n_layer=shapes[:, 0], n_head=shapes[:, 1],
                                          head_dim=shapes[:, 2], ffn=shapes[:, 3])
        return shapes, np.asarray(counts, dtype=np.int64)

    @property
    def min_parameters(self) -> int:
        """Parameters of the smallest model in the space (every variable at its lowest)."""
        return self.count({k: int(self.values[k][0]) for k in VARIABLES})

    def exhaustive_best(self, target: int, exclude=()) -> tuple[dict, float]:
        """The best shape by exhaustive enumeration, skipping the shapes (dicts) in ``exclude``:
        the reference the Bayesian search is judged by."""
        shapes, counts = self.grid
        err = np.abs(counts - target) / target
        for shape in exclude:
            row = np.array([shape[k] for k in VARIABLES])
            err = np.where((shapes == row).all(axis=1), np.inf, err)
        i = int(np.argmin(err))
        best = dict(zip(VARIABLES, (int(v) for v in shapes[i])))
        best["hidden"] = best["n_head"] * best["head_dim"]
        return best, float(err[i])


def grid_step(top: int, min_values: int, multiple: int = 1) -> int:
    """The coarsest step of ``STEPS`` (a multiple of ``multiple``) that divides ``top`` and leaves
    ``min_values`` grid values, else the finest such step."""
    dividing = [s for s in STEPS if top % s == 0 and s % multiple == 0] or [multiple]
    return next((s for s in dividing if top // s >= min_values), dividing[-1])


def shape_key(shape: dict) -> str:
    """A shape's identity for the diversity term (the table's shape string)."""
    return shape_string(shape)
