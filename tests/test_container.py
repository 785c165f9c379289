"""common.container: the SageMaker training-container contract read from a faked /opt/ml and SM_* variables,
the failure file, hyperparameter overrides, and the distributed helpers in a real 2-process gloo group."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import container


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(key)


def write_config(root: Path, name: str, content: dict) -> None:
    folder = root / "input" / "config"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content))


def test_the_files_of_a_faked_opt_ml_with_sagemakers_string_values(tmp_path):
    write_config(tmp_path, "hyperparameters.json", {"profile": "tiny", "epochs": "3", "lr": "0.01",
                                                    "widths": "[16, 32]", "name": '"quoted"', "augment": "false"})
    write_config(tmp_path, "inputdataconfig.json", {"train": {"TrainingInputMode": "File"}, "test": {}})
    write_config(tmp_path, "resourceconfig.json", {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"],
                                                   "network_interface_name": "eth0"})
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    contract = container.Contract.from_env(tmp_path)
    assert contract.hyperparameters == {"profile": "tiny", "epochs": 3, "lr": 0.01, "widths": [16, 32],
                                        "name": "quoted", "augment": False}
    assert contract.model_dir == tmp_path / "model" and contract.checkpoint_dir == tmp_path / "checkpoints"
    assert contract.failure_file == tmp_path / "output" / "failure"
    assert contract.output_dir == tmp_path / "output" / "data"
    assert contract.hosts == ("algo-1", "algo-2") and contract.current_host == "algo-2" and contract.host_count == 2
    assert contract.channel("train") == tmp_path / "input" / "data" / "train"
    with pytest.raises(ValueError, match="'test'.*is not a folder"):
        contract.channel("test")  # listed, but no files arrived
    with pytest.raises(ValueError, match="no input channel 'valid' .*channels: test, train"):
        contract.channel("valid")


def test_sm_variables_win_over_the_files_and_defaults_fill_the_rest(tmp_path, monkeypatch):
    write_config(tmp_path, "hyperparameters.json", {"epochs": "3"})
    monkeypatch.setenv("SM_HPS", json.dumps({"epochs": 5, "profile": "quick"}))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(tmp_path / "data"))
    monkeypatch.setenv("SM_CHANNELS", json.dumps(["training"]))
    monkeypatch.setenv("SM_HOSTS", json.dumps(["algo-1", "algo-2", "algo-3"]))
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-3")
    contract = container.Contract.from_env(tmp_path)
    assert contract.hyperparameters == {"epochs": 5, "profile": "quick"}
    assert contract.model_dir == tmp_path / "elsewhere"
    assert contract.channels == {"training": tmp_path / "data"}
    assert contract.host_count == 3 and contract.current_host == "algo-3"

    bare = container.Contract.from_env(tmp_path / "nothing", environ={})
    assert bare.hyperparameters == {} and bare.channels == {} and bare.hosts == ("algo-1",)
    moved = tmp_path / "ckpt"
    write_config(tmp_path / "moved", "hyperparameters.json", {"checkpoint_dir": str(moved)})
    assert container.Contract.from_env(tmp_path / "moved", environ={}).checkpoint_dir == moved


def test_a_broken_config_file_is_named(tmp_path):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text("{not json")
    with pytest.raises(ValueError, match="hyperparameters.json is not valid JSON"):
        container.Contract.from_env(tmp_path, environ={})


def test_a_failure_is_written_where_sagemaker_reads_its_reason_and_raised_again(tmp_path):
    contract = container.Contract.from_env(tmp_path, environ={})
    with pytest.raises(RuntimeError, match="out of disk"), container.failures_reported(contract):
        raise RuntimeError("out of disk" + " (details)" * 300)
    reason = contract.failure_file.read_text()
    assert reason.startswith("RuntimeError: out of disk") and len(reason) == container.FAILURE_LIMIT
    other = container.Contract.from_env(tmp_path / "other", environ={})
    with pytest.raises(KeyboardInterrupt), container.failures_reported(other):
        raise KeyboardInterrupt  # an interrupt is not a failure of the job's own making
    assert not (tmp_path / "other" / "output" / "failure").exists()


@dataclass(frozen=True)
class Settings:
    epochs: int = 2
    lr: float = 1e-3
    widths: tuple[int, ...] = (8, 16)
    limit: int | None = None
    augment: bool = True


def test_hyperparameters_override_a_frozen_config_with_their_types_checked():
    changed = container.override(Settings(), {"epochs": 5, "lr": 1, "widths": [16, 32], "limit": 100, "other": 1})
    assert changed == Settings(epochs=5, lr=1.0, widths=(16, 32), limit=100)
    with pytest.raises(ValueError, match="epochs='five': expected a int"):
        container.override(Settings(), {"epochs": "five"})
    with pytest.raises(ValueError, match="augment=1: expected a bool"):
        container.override(Settings(), {"augment": 1})
    container.check_known({"epochs": 1, "sagemaker_program": "x"}, container.fields_of(Settings()))
    with pytest.raises(ValueError, match="unknown hyperparameter.*epoch; this entry point reads"):
        container.check_known({"epoch": 1}, container.fields_of(Settings()))


def test_a_single_process_needs_no_group():
    group = container.init_distributed()
    assert group == container.current() == container.SINGLE or group.device.type == "cuda"
    model = torch.nn.Linear(2, 2)
    assert group.wrap(model) is model and group.any(True) and not group.any(False)
    assert group.mean(0.5) == 0.5 and group.sum([1.0, 2.0]) == [1.0, 2.0] and group.shard(32) == 32
    group.barrier()
    group.sync_buffers(torch.nn.BatchNorm1d(2))


def _rank(rank: int, init_file: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    group = container.init_distributed()
    norm = torch.nn.BatchNorm1d(3)
    norm.running_mean.fill_(float(rank + 1))  # each rank's own statistics
    group.sync_buffers(norm)
    results.put((rank, group.rank, group.world_size, group.any(rank == 1), group.any(False),
                 group.mean(float(rank)), group.sum([1.0, float(rank)]), norm.running_mean.tolist(), group.shard(32),
                 container.current().rank))
    container.shutdown()


def test_two_gloo_processes_agree_to_stop_and_share_rank_zeros_statistics(tmp_path):
    """A real 2-process gloo group: one rank's stop is every rank's (no rank left waiting in a
    collective), losses average, rank 0's BatchNorm statistics reach rank 1."""
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank, args=(rank, str(tmp_path / "init"), results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    got = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank, (r, group_rank, world, stop, no_stop, mean, sums, running_mean, shard, current_rank) in enumerate(got):
        assert (r, group_rank, world, current_rank) == (rank, rank, 2, rank)
        assert stop is True and no_stop is False  # rank 1 alone asked to stop
        assert mean == 0.5 and sums == [2.0, 1.0] and shard == 16
        assert running_mean == [1.0, 1.0, 1.0]  # rank 0's
    with pytest.raises(ValueError, match="batch_size 33 does not divide among 2 processes"):
        container.Distributed(0, 2).shard(33)
