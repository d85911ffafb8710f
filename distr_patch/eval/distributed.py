"""Sharding of evaluation items over processes (``accelerate launch``), one exact gather and a broadcast.

Each process evaluates items ``rank, rank + world, ...``; ``gather`` returns every item's result on every
process, ordered by item index, so metrics are computed once from the same numbers in the same order as
a single process would (sums included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def check_device(device: str | None, flag: str = "--device") -> None:
    """``--device`` (or ``flag``): None (the process's device) or a device this machine has (cpu, cuda, cuda:1, ...);
    otherwise a ConfigError naming the flag."""
    if not device:
        return
    import torch

    from .config import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{flag} {device!r}: not a device name (cpu, cuda, cuda:1, ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ConfigError(f"{flag} {device}: {why}; use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "meta":  # (a tensor can go there, but holds no values to score or time)
        raise ConfigError(f"{flag} {device}: meta tensors hold no data; use cpu or cuda")
    elif dev.type != "cpu":  # mps, xpu, ...: whether torch can put a tensor there
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            raise ConfigError(f"{flag} {device}: {e}") from None


def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started for this run (their WORLD_SIZE; 1 alone)."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def refuse_several_processes(command: str, why: str) -> None:
    """A ConfigError for commands that run in one process only, when launched in several."""
    n = launched_processes()
    if n > 1:
        from .config import ConfigError

        raise ConfigError(f"{command} runs in one process ({why}), but {n} were launched (WORLD_SIZE={n}); run it "
                          "without accelerate launch / torchrun")


def process_state(device: str | None = None):
    """accelerate's process state. Without CUDA (or with ``--device cpu``) processes started by
    ``accelerate launch --multi_gpu`` / ``torchrun`` join one gloo group (accelerate's MULTI_CPU).
    ``device`` is checked first (``check_device``)."""
    import torch
    from accelerate import PartialState

    check_device(device)

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, device: str | None = None) -> "Shard":
        state = process_state(device)
        return cls(state.process_index, state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def at_once(self) -> str:
        """A timing unit's suffix: how many processes ran (and were timed) at the same time, when several."""
        return f", {self.world} processes at once" if self.world > 1 else ""

    def indices(self, n: int) -> range:
        return range(self.rank, n, self.world)

    def gather(self, items: list[tuple[int, Any]]) -> list[Any]:
        """``items`` = [(index, result)] of this process -> all results, ordered by index."""
        if self.world > 1:
            from accelerate.utils import gather_object

            items = gather_object(items)
        return [r for _, r in sorted(items, key=lambda x: x[0])]

    def gather_all(self, items: list) -> list:
        """Every process's ``items`` (e.g. timing samples), concatenated in rank order, on every process."""
        if self.world > 1:
            from accelerate.utils import gather_object

            return list(gather_object(list(items)))
        return list(items)

    def broadcast(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process."""
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            obj = broadcast_object_list([obj], from_process=0)[0]
        return obj

    def barrier(self) -> None:
        if self.world > 1:
            process_state().wait_for_everyone()
