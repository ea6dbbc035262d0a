"""Where each peer lives: all on this process's device (``peer_placement = "replicate"``, the
default), or spread over several devices of this process (``"spread"``) when the peers do not fit
on one together.

Why it is this small: a peer's forward takes its inputs to the peer's device and brings its logits
back to the process's main device (:func:`wml_framework.api.peer_logits`), where the loss, the
teacher and ω live; autograd carries the gradients back across. Each peer keeps its own AdamW on
its own device, and the data-parallel all-reduce groups tensors by device.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["device_names", "check_devices", "rank_devices", "rank_device", "assign", "peer_placement"]

REPLICATE, SPREAD = "replicate", "spread"


def device_names(text: str) -> list[str]:
    """The device names of a ``peer_devices`` value (separated by commas, blanks ignored): the one
    reading of that setting, for its check, the run's device check and the placement."""
    return [d.strip() for d in str(text or "").split(",") if d.strip()]


def check_devices(names: Sequence[str]) -> list[torch.device]:
    """``peer_devices`` as torch devices; a CUDA index that this machine does not have is an error."""
    devices = []
    for name in names:
        try:
            dev = torch.device(str(name))
        except (RuntimeError, ValueError):
            raise ValueError(f"config key 'peer_devices': value {name!r} is not a device; expected 'cpu', 'cuda' "
                             "or 'cuda:N'") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"config key 'peer_devices': value {name!r} is not allowed; expected 'cpu' or 'cuda:N'")
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (dev.index or 0) >= count:
                raise ValueError(f"config key 'peer_devices': value {name!r} is not allowed here: this machine has "
                                 f"{count} CUDA device(s)")
        devices.append(dev)
    return devices


def rank_devices(names: Sequence[str], main: torch.device, local_rank: int = 0, local_world: int = 1) -> list[torch.device]:
    """The devices this process spreads its peers over: ``peer_devices`` if given, else its share of
    the node's GPUs (process k of L takes GPUs k·G/L … (k+1)·G/L − 1), else just ``main``."""
    if names:
        return check_devices(names)
    if main.type == "cuda" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        share = max(1, count // max(1, local_world))
        first = local_rank * share
        return [torch.device("cuda", k) for k in range(first, min(count, first + share))] or [main]
    return [main]


def assign(sizes: Sequence[int], devices: Sequence[torch.device]) -> list[torch.device]:
    """Largest peer first onto the least-loaded device (by parameter count): balanced memory."""
    load = [0] * len(devices)
    out: list = [None] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        d = min(range(len(devices)), key=lambda k: (load[k], k))
        out[i] = devices[d]
        load[d] += sizes[i]
    return out


def peer_placement(peers: Sequence[torch.nn.Module], placement: str, names: Sequence[str], main: torch.device,
                   local_rank: int = 0, local_world: int = 1) -> list[torch.device]:
    """The device of each peer under ``placement``."""
    if placement == REPLICATE:
        return [main] * len(peers)
    if placement != SPREAD:
        raise ValueError(f"config key 'peer_placement': value {placement!r} is not allowed; expected "
                         f"{REPLICATE!r} or {SPREAD!r}")
    devices = rank_devices(names, main, local_rank, local_world)
    return assign([sum(p.numel() for p in peer.parameters()) for peer in peers], devices)


def rank_device(device: torch.device, dist, placement: str, peer_devices: str) -> torch.device:
    """This process's main device: each rank's own GPU (``cuda:LOCAL_RANK``; with ``placement =
    "spread"`` and no ``peer_devices``, the first of the GPUs it spreads over); CPU ranks share the
    CPU. ``dist`` is the :class:`~wml_framework.runtime.distributed.Context` of this process."""
    if device.type == "cuda" and placement == SPREAD and not device_names(peer_devices):
        return rank_devices([], torch.device("cuda", 0))[0]      # one process (several are refused before work)
    if device.type == "cuda" and dist.active:
        return torch.device("cuda", dist.local_rank)
    return device
