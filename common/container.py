"""The SageMaker training-container contract, and the few torch.distributed helpers an entry point needs.

SageMaker starts the training image with this layout (AWS, "How Amazon SageMaker AI Provides Training
Information" and "Use checkpoints in Amazon SageMaker AI"):

    /opt/ml/input/config/hyperparameters.json   {"name": "value", ...}: every value a string
    /opt/ml/input/config/inputdataconfig.json   {"<channel>": {"TrainingInputMode": ..., ...}}
    /opt/ml/input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": ["algo-1", ...]}
    /opt/ml/input/data/<channel>/                each input channel's files (File mode)
    /opt/ml/model/                               what the job leaves: uploaded as model.tar.gz
    /opt/ml/output/failure                       why it failed: becomes the job's FailureReason
    /opt/ml/output/data/                         other output (output.tar.gz)
    /opt/ml/checkpoints/                         synced to CheckpointConfig's S3 URI; restored into a
                                                 restarted (spot) job before the entry point runs

and the framework images' training toolkit sets `SM_MODEL_DIR`, `SM_CHANNEL_<NAME>`, `SM_CHANNELS`,
`SM_HPS`, `SM_HOSTS`, `SM_CURRENT_HOST`, `SM_HOST_COUNT`, `SM_OUTPUT_DATA_DIR`, which win over the files.
`Contract.from_env(root)` reads all of it with those defaults; tests pass a `tmp_path` as `root`.

Distribution: torchrun (or SageMaker's `torch_distributed`) starts one process per device and sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT. `init_distributed()` joins that group (gloo on CPU,
nccl on GPU) and returns a `Distributed`; without torchrun's variables it is the single process
`SINGLE`, and nothing else changes. Training loops ask `current()`, so a notebook's in-process fit
(no process group) trains exactly as before, and the same fit under torchrun trains its shard.
Only `torch.distributed` APIs older than torch 2.14 are used (SageMaker's newest PyTorch image).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

ROOT = Path("/opt/ml")
FAILURE_LIMIT = 1024  # DescribeTrainingJob's FailureReason holds at most 1,024 characters
# How long a collective may wait for the slowest rank. torch's defaults (10 minutes for nccl, 30 for gloo) can be
# shorter than the time the first process on a host takes to decode a large photo set into the cache that the
# others wait for at a barrier (landmark: a 200,000-photo subset); the job's MaxRuntime still bounds a hang.
GROUP_TIMEOUT = timedelta(hours=2)


def parse_value(text: Any) -> Any:
    """A hyperparameter as SageMaker hands it over (always a string): JSON when it parses ("3" -> 3,
    "[8, 16]" -> [8, 16], '"tiny"' -> "tiny", as the SDKs that JSON-encode values send it), else the
    string itself ("tiny")."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


C = TypeVar("C")


def _convert(name: str, value: Any, current: Any) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(current):
        raise ValueError(f"hyperparameter {name}={value!r}: expected a {type(current).__name__} "
                         f"like its default {current!r}")
    return value


def override(config: C, hyperparameters: Mapping[str, Any]) -> C:
    """`dataclasses.replace(config, ...)` with the hyperparameters that name its fields, each checked
    against the type of the value it replaces (a list for a tuple, an int for a float are fine)."""
    names = {f.name for f in dataclasses.fields(config)}
    changes = {key: _convert(key, value, getattr(config, key)) for key, value in hyperparameters.items()
               if key in names}
    return dataclasses.replace(config, **changes)


def check_known(hyperparameters: Mapping[str, Any], known: Iterable[str]) -> None:
    """A ValueError naming any hyperparameter the entry point does not read (a typo would otherwise be
    a silently ignored setting); the SDKs' own `sagemaker_*` ones are left alone."""
    known = set(known)
    unknown = sorted(k for k in hyperparameters if k not in known and not k.startswith("sagemaker_"))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; this entry point reads "
                         f"{', '.join(sorted(known))}")


def fields_of(*configs: Any) -> set[str]:
    return {f.name for config in configs for f in dataclasses.fields(config)}


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


@dataclass(frozen=True)
class Contract:
    """Where this training job reads and writes, and what it was asked (see the module docstring)."""
    root: Path
    model_dir: Path
    output_dir: Path      # /opt/ml/output/data
    failure_file: Path    # /opt/ml/output/failure
    checkpoint_dir: Path  # /opt/ml/checkpoints, or the `checkpoint_dir` hyperparameter
    channels: Mapping[str, Path] = field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"

    @property
    def host_count(self) -> int:
        return len(self.hosts)

    def channel(self, name: str) -> Path:
        """The folder of input channel `name`; a ValueError naming the channels there are."""
        if name not in self.channels:
            there = ", ".join(sorted(self.channels)) or "none"
            raise ValueError(f"the training job has no input channel {name!r} (channels: {there}; "
                             f"expected {self.root}/input/data/{name}/ or SM_CHANNEL_{name.upper()})")
        folder = self.channels[name]
        if not folder.is_dir():
            raise ValueError(f"input channel {name!r}: {folder} is not a folder")
        return folder

    def hyperparameter(self, name: str, default: Any = None) -> Any:
        return self.hyperparameters.get(name, default)

    @classmethod
    def from_env(cls, root: str | os.PathLike = ROOT, environ: Mapping[str, str] | None = None) -> Contract:
        """The contract of the job this process runs in: the `SM_*` variables where set, else the
        files under `root` (default /opt/ml), else the documented defaults (one host, no channel)."""
        env = os.environ if environ is None else environ
        root = Path(root)
        config = root / "input" / "config"
        hps = env.get("SM_HPS")
        raw = json.loads(hps) if hps else (_read_json(config / "hyperparameters.json") or {})
        hyperparameters = {key: parse_value(value) for key, value in raw.items()}
        resources = _read_json(config / "resourceconfig.json") or {}
        hosts = tuple(json.loads(env["SM_HOSTS"])) if env.get("SM_HOSTS") else tuple(resources.get("hosts", ()))
        current = env.get("SM_CURRENT_HOST") or resources.get("current_host") or (hosts[0] if hosts else "algo-1")
        checkpoints = hyperparameters.get("checkpoint_dir") or root / "checkpoints"
        return cls(root=root, model_dir=Path(env.get("SM_MODEL_DIR") or root / "model"),
                   output_dir=Path(env.get("SM_OUTPUT_DATA_DIR") or root / "output" / "data"),
                   failure_file=root / "output" / "failure", checkpoint_dir=Path(checkpoints),
                   channels=_channels(root, config, env), hyperparameters=hyperparameters,
                   hosts=hosts or (current,), current_host=current)


def _channels(root: Path, config: Path, env: Mapping[str, str]) -> dict[str, Path]:
    """Channel name -> folder: SM_CHANNEL_<NAME> wins; else the channels inputdataconfig.json (or
    SM_CHANNELS) lists, else every folder under input/data/, at root/input/data/<name>."""
    data = root / "input" / "data"
    names = json.loads(env["SM_CHANNELS"]) if env.get("SM_CHANNELS") else list(
        _read_json(config / "inputdataconfig.json") or [])
    if not names and data.is_dir():
        names = sorted(p.name for p in data.iterdir() if p.is_dir())
    channels = {name: data / name for name in names}
    for key, value in env.items():
        if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
            channels[key.removeprefix("SM_CHANNEL_").lower()] = Path(value)
    return channels


def write_failure(contract: Contract, error: BaseException) -> Path:
    """Write why the job failed where SageMaker reads it (its FailureReason: at most 1,024 characters,
    so the error itself first, then the innermost frames of the traceback)."""
    frames = "".join(traceback.format_tb(error.__traceback__)[-3:])
    text = f"{type(error).__name__}: {error}\n{frames}"[:FAILURE_LIMIT]
    contract.failure_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = contract.failure_file.with_name(f".failure.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(contract.failure_file)
    return contract.failure_file


@contextmanager
def failures_reported(contract: Contract) -> Iterator[None]:
    """Run the block; an exception is written to the failure file and raised again (the non-zero exit
    is what makes the job Failed; the file is what DescribeTrainingJob shows as its reason)."""
    try:
        yield
    except BaseException as error:
        if not isinstance(error, (KeyboardInterrupt, SystemExit)):
            write_failure(contract, error)
        raise


def run(train: Callable[[Contract, Distributed], None], description: str, argv: list[str] | None = None) -> None:
    """An entry point's `main`: read the contract (under `--root`, default /opt/ml), join torchrun's
    process group, `train(contract, group)`, leave the group; a failure goes to the failure file.
    Unknown command-line arguments are ignored: the SDKs also pass the hyperparameters as `--name
    value`, and the contract's hyperparameters.json (or SM_HPS) is where they are read."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the training container's /opt/ml folder (default %(default)s; SM_* variables win)")
    args, _ = parser.parse_known_args(argv)
    contract = Contract.from_env(args.root)
    with failures_reported(contract):
        group = init_distributed()
        try:
            train(contract, group)
        finally:
            shutdown()


# ------------------------------------------------------------------- distributed training


@dataclass(frozen=True)
class Distributed:
    """This process's place in the training job: `rank` of `world_size` processes (`local_rank` on
    its host). The single-process instance (`SINGLE`) makes every helper a no-op."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the model, metrics and checkpoints."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on its host (for work each host does once, such as a decode cache)."""
        return self.local_rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged over the processes after every
        backward), or `model` itself in a single process. DDP copies rank 0's weights and buffers to
        every rank when it wraps, and rank 0's buffers (BatchNorm statistics) before every forward."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (an all-reduce MAX): how all ranks agree to stop
        early together, so none waits forever in a collective the others have left."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (each rank's training loss over its equal shard -> the
        loss over all of them)."""
        if not self.distributed:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item() / self.world_size

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (counts and totals of the ranks' shards)."""
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
        before each training forward, but each rank's last forward then moves its own copy; after
        this every rank validates the same model, so all reach the same decisions."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def shard(self, batch_size: int) -> int:
        """The per-process batch of a global `batch_size` (which must divide evenly, so that DDP's
        average of the processes' mean gradients is the mean gradient of the global batch)."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} does not divide among {self.world_size} processes; "
                             f"choose a multiple of {self.world_size}")
        return batch_size // self.world_size


SINGLE = Distributed()


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> Distributed:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT): nccl on GPUs, gloo on CPUs. Without WORLD_SIZE > 1: `SINGLE`, on the
    GPU when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local_rank)
    if world <= 1:
        return Distributed(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=GROUP_TIMEOUT)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device)


def current() -> Distributed:
    """The process group this process is in (`SINGLE` when none was initialised: a notebook)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown() -> None:
    """Leave the process group (every rank, after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
