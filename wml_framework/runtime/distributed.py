"""Data-parallel runs with ``torch.distributed``, launched by ``torchrun`` (gloo on CPU, NCCL on GPU).

Why this shape: every rank holds all M peers and draws the *same* global batch from the same
seeded generator, then keeps its own contiguous share of the rows. Gradients, logged losses and
every quantity of the outer step are averaged over ranks. The inner step weighs each share by its
labelled tokens (the training loop's ``_token_weights``: equal shares under a causal objective,
random ones under masking), so its gradient is the global token mean. A run on N ranks therefore
computes what one process computes on the global batch, up to the order of floating-point sums
(under masking, the outer step's quantities are averaged with equal weights: docs/objectives.md),
and a checkpoint
is the same whatever the number of ranks that wrote it: a run resumes on another number of ranks.

One process (no ``torchrun``) is :data:`SINGLE`: every operation is the identity, nothing is
imported from ``torch.distributed``. Rank 0 alone writes files; the others wait at barriers where
they need its results (the tokenizer cache, the teacher, the peers).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence

import torch

__all__ = ["DEBUG_ENV", "TIMEOUT_ENV", "DistributedError", "Context", "SINGLE", "current",
           "launched_by_torchrun", "init_from_env", "shutdown", "launch_rank", "launch_world", "main_only",
           "is_peer_failure", "debug_checks"]

#: set to 1 to compare ω's checksum across ranks after every outer step (a mismatch stops the run)
DEBUG_ENV = "WML_DEBUG_DISTRIBUTED"
#: minutes a collective may wait (default 24 h): ranks wait at a barrier while rank 0 tokenizes a corpus
#: and trains the teacher, which can take hours; a rank that dies is still noticed at once (gloo)
TIMEOUT_ENV = "WML_DISTRIBUTED_TIMEOUT_MIN"


class DistributedError(RuntimeError):
    """Ranks that disagree, or a launch that cannot work (says what and how to fix it)."""


@dataclass(frozen=True)
class Context:
    """Which rank this process is, of how many; the identity when ``world == 1``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1          # processes on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------
    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch's rows (all shares equal)."""
        if not self.active:
            return rows
        n = rows.shape[0] // self.world
        return rows[self.rank * n:(self.rank + 1) * n]

    def check_batch(self, batch_size: int) -> None:
        if self.active and batch_size % self.world:
            raise DistributedError(f"config key 'batch_size': value {batch_size} is not allowed with {self.world} "
                                   f"processes; expected a multiple of {self.world} (each rank takes an equal share)")

    # -- collectives -------------------------------------------------------------------------
    def mean_(self, tensors: Sequence[Optional[torch.Tensor]]) -> None:
        """Average tensors over ranks, in place, with one all-reduce (None entries skipped)."""
        live = [t for t in tensors if t is not None]
        if not self.active or not live:
            return
        import torch.distributed as dist

        by_dtype: dict = {}
        for t in live:
            by_dtype.setdefault((t.dtype, t.device), []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def mean_floats(self, values: Sequence[float]) -> list[float]:
        """Python floats averaged over ranks (in float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self.mean_([t])
        return t.tolist()

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Python floats summed over ranks (in float64; counts stay exact)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one."""
        return any(self.gather(bool(flag))) if self.active else bool(flag)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for plans, configs and state dicts)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def same_everywhere(self, tensor: torch.Tensor, what: str) -> None:
        """Raise when ``tensor`` is not bit-identical on every rank (compares a checksum)."""
        if not self.active:
            return
        digest = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        digests = self.gather(digest)
        if len(set(digests)) > 1:
            raise DistributedError(f"{what} differs between ranks (checksums {[d[:12] for d in digests]})")

    @property
    def device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Context()
_current = SINGLE


def current() -> Context:
    """The context of this process (``SINGLE`` unless :func:`init_from_env` started one)."""
    return _current


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_kind: str) -> Context:
    """Join the process group ``torchrun`` describes in the environment (once per process).

    ``device_kind`` is the run's device setting: CUDA ranks use NCCL, each on ``cuda:LOCAL_RANK``;
    CPU ranks use gloo."""
    global _current
    if not launched_by_torchrun() or _current.active:
        return _current
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, 24 * 60))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=minutes))
    _current = Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                       local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return _current


def shutdown() -> None:
    """Leave the process group (the end of a torchrun worker)."""
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _current = SINGLE


def launch_rank() -> int:
    """This process's rank as torchrun announced it (0 without torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def launch_world() -> int:
    """How many processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def main_only(log):
    """``log`` on rank 0; nothing on the others (one voice per run, not one per process)."""
    def logged(message: str) -> None:
        if launch_rank() == 0:
            log(message)
    return logged


def is_peer_failure(exc: BaseException) -> bool:
    """An error of a collective whose other side went away (a rank was killed or failed)."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(exc, backend_error) or (isinstance(exc, RuntimeError) and any(
        s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer", "gloo/transport")))


def debug_checks() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
