"""Multi-process helpers on `torch.distributed`: the process group, pool shards and reductions.

A distributed run is started by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``); `setup` joins its process group (gloo on
CPU, NCCL on CUDA). Without those variables every helper here is a no-op for one process, so the
single-process code path is the same code.

What is split across ranks is the pool: its rows are cut into blocks of the generation batch
size, and rank r generates and searches a contiguous run of blocks (`block_range`). A batch of
the generator therefore sees the same rows on any number of ranks, and the per-rank nearest
samples are merged by `global_nearest` (minimum distance, ties to the lowest global row) into the
single-process answer. Everything else a rank holds (data, matching-rule state, optimiser) is a
replica kept identical by deterministic, agreed updates.

A collective that fails because another rank died raises `RankFailure`.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import socket

import torch
import torch.distributed as tdist

from imle.errors import IMLEError


class RankFailure(IMLEError, RuntimeError):
    """Another process of a distributed run stopped (died, was killed, or raised)."""


def env_world_size() -> int:
    """WORLD_SIZE set by the launcher (1 when started without one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder, logs and prints."""
    return rank() == 0


def env_rank() -> int:
    """RANK set by the launcher (0 without one); readable before `setup`."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def setup(device: torch.device, timeout_minutes: float | None = None) -> torch.device:
    """Joins the launcher's process group when WORLD_SIZE > 1 (idempotent).

    Args:
        device: the configured device; a bare "cuda" becomes ``cuda:LOCAL_RANK`` so each process
            of a node drives its own GPU.
        timeout_minutes: how long a collective waits for a silent peer before failing (default:
            ``IMLE_DIST_TIMEOUT_MINUTES`` or 10).

    Returns:
        The device this process trains on.
    """
    if env_world_size() <= 1:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        minutes = timeout_minutes or float(os.environ.get("IMLE_DIST_TIMEOUT_MINUTES", "10"))
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                 timeout=datetime.timedelta(minutes=minutes))
    return device


def describe(device: torch.device) -> dict:
    """The processes of this run, for its record: world size, backend and each rank's host and
    device. A collective under a process group: every process must call it."""
    if not active():
        return {"world_size": 1, "backend": None,
                "devices": [f"{socket.gethostname()}/{device}"]}
    devices: list = [None] * world_size()
    tdist.all_gather_object(devices, f"{socket.gethostname()}/{device}")
    return {"world_size": world_size(), "backend": str(tdist.get_backend()), "devices": devices}


def shutdown(wait: bool = True) -> None:
    """Leaves the process group at the normal end of a command; ``wait``: first meet the
    other processes in a barrier.

    Drop every DistributedDataParallel wrapper first: it holds the group, and a group whose
    last reference dies during interpreter shutdown can abort the process (gloo threads)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return
    with contextlib.suppress(RuntimeError):  # a peer already gone: leave anyway
        if wait and tdist.get_world_size() > 1:
            tdist.barrier()
    tdist.destroy_process_group()
    gc.collect()


def failure(exc: BaseException, where: str) -> RankFailure:
    """The error a rank raises when a collective (``where``) fails under it."""
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return RankFailure(
        f"rank {rank()} of {world_size()}: {where} failed because another process of this "
        f"distributed run stopped (it died, was killed, or raised its own error, shown by the "
        f"launcher) [{first}]")


def all_reduce(t: torch.Tensor, op: str = "sum", where: str = "a collective") -> torch.Tensor:
    """In-place all-reduce ("sum", "min" or "max") over the ranks; returns ``t``."""
    if not active():
        return t
    red = {"sum": tdist.ReduceOp.SUM, "min": tdist.ReduceOp.MIN, "max": tdist.ReduceOp.MAX}[op]
    try:
        tdist.all_reduce(t, op=red)
    except RuntimeError as exc:  # DistBackendError and gloo's connection errors
        raise failure(exc, where) from exc
    return t


def gather_rows(values: list[float], device: torch.device | str = "cpu",
                where: str = "a collective") -> torch.Tensor:
    """Every rank's ``values`` (same length on all), as a (world_size, len) float64 tensor."""
    w = world_size()
    out = torch.zeros(w, len(values), dtype=torch.float64, device=device)
    out[rank()] = torch.tensor(values, dtype=torch.float64)
    return all_reduce(out, "sum", where)


def agree(ok: bool, device: torch.device | str = "cpu", what: str = "start-up") -> None:
    """Raises RankFailure on every rank where ``ok`` holds when any rank's ``ok`` is False, so a
    rank that raised its own error does not leave the others waiting in a collective."""
    if not active():
        return
    flags = gather_rows([float(ok)], device, what)[:, 0]
    if bool((flags == 0).any()):
        bad = [int(r) for r in (flags == 0).nonzero().flatten()]
        raise RankFailure(f"{what} failed on rank(s) {bad} of {world_size()}; see their error")


def block_range(num_rows: int, block: int) -> tuple[int, int]:
    """This rank's contiguous rows [lo, hi) of ``num_rows``, split in whole blocks of ``block``
    (the last block may be short) as evenly as the block count allows."""
    w = world_size()
    if w == 1:
        return 0, num_rows
    blocks = -(-num_rows // block)
    r = rank()
    lo, hi = r * blocks // w * block, (r + 1) * blocks // w * block
    return min(lo, num_rows), min(hi, num_rows)


def global_nearest(distances: torch.Tensor, rows: torch.Tensor, latents: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merges each rank's nearest pool row of every query into the nearest over the whole pool.

    Args:
        distances: (n,) float32 distance of each query's nearest row on this rank (inf: none).
        rows: (n,) int64 global pool row of that sample.
        latents: (n, latent_dim) its latent.

    Returns:
        (distances (n,), rows (n,), latents (n, latent_dim)), identical on every rank: the
        minimum distance, ties to the lowest global row, with the owner's latent.
    """
    if not active():
        return distances, rows, latents
    best = all_reduce(distances.float().clone(), "min", "the nearest-sample merge")
    big = torch.iinfo(torch.int64).max
    mine = torch.where(distances.float() == best, rows, torch.full_like(rows, big))
    row = all_reduce(mine.clone(), "min", "the nearest-sample merge")
    owned = (rows == row) & (mine != big)
    # Exact: every row of the sum is one rank's latent plus zeros.
    lat = torch.where(owned[:, None], latents.float(), torch.zeros((), device=latents.device))
    return best, row, all_reduce(lat, "sum", "the nearest-sample merge")
