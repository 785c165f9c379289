"""The scratch CNN as a SageMaker training job (or torchrun on one bigger machine): the notebook's run, in DDP.

    python -m landmark_classifier.src.sagemaker_entry [--root /opt/ml]
    torchrun --standalone --nproc_per_node 4 -m landmark_classifier.src.sagemaker_entry --root ...

Reads the training-container contract (`common.container`): the photos from channel "train" in the
Udacity layout (`<channel>/train/NN.Name/*.jpg` and `<channel>/test/NN.Name/*.jpg`, as `data.download`
leaves them; any dataset in that layout) and these hyperparameters (strings; JSON values decoded):

    profile        tiny | quick | full (default full): the notebook's profiles (src/config.py), real-photo budget
    seed           the validation split's and the training's (default 0, as the notebook)
    image_size, widths, blocks_per_stage, dropout, epochs, batch_size, lr, weight_decay,
    label_smoothing, optimizer, schedule, trivial_augment, mirror_eval      override the ScratchConfig
    checkpoint_dir where checkpoints go (default /opt/ml/checkpoints)

`batch_size` is the global batch: each of N processes takes batch_size / N images of it (its
`DistributedSampler` share), so the schedule and learning rate mean what they mean on one machine.
Training is `train.train_scratch`, as the notebook calls it, with its checkpoints in
`checkpoint_dir/scratch_<settings hash>/` (every epoch; a restarted job continues from them). The first
process on each host decodes the photos into a cache in the temporary folder; the others read it.
Rank 0 writes into the model folder, for `load_trained`: `scratch_cnn.pth` (the best epoch's
state_dict), `training.json` (configuration, classes, normalisation, history) and `metrics.json`.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from common import container, torchkit
from landmark_classifier.src import data, model, train
from landmark_classifier.src.config import ScratchConfig, config_for

RESERVED = {"profile", "seed", "checkpoint_dir"}
WEIGHTS, RECORD = "scratch_cnn.pth", "training.json"


def scratch_config(hyperparameters: dict) -> ScratchConfig:
    """The profile's real-photo ScratchConfig with the hyperparameters' overrides."""
    base = config_for(str(hyperparameters.get("profile", "full"))).real.scratch
    container.check_known(hyperparameters, RESERVED | container.fields_of(base))
    return container.override(base, hyperparameters)


def decoded_splits(landmarks: data.LandmarkData, config: ScratchConfig, group: container.Distributed,
                   seed: int) -> data.Splits:
    """`data.load_splits`, decoded once per host: its first process fills the cache, then the rest read it."""
    cache = Path(tempfile.gettempdir()) / "landmark_classifier" / "decoded"
    splits = data.load_splits(landmarks, config.resize_size, cache, seed=seed) if group.is_local_main else None
    group.barrier()
    return splits or data.load_splits(landmarks, config.resize_size, cache, seed=seed)


def train_job(contract: container.Contract, group: container.Distributed) -> None:
    hyperparameters = dict(contract.hyperparameters)
    config = scratch_config(hyperparameters)
    seed = int(hyperparameters.get("seed", 0))
    landmarks = data.open_dataset(contract.channel("train"))
    splits = decoded_splits(landmarks, config, group, seed)
    torchkit.seed_everything(seed)  # as the notebook seeds its run
    checkpoints = train.checkpoint_dir(contract.checkpoint_dir, config, landmarks, seed)
    with torchkit.measure() as cost:
        run = train.train_scratch(splits, config, group.device, checkpoints, seed)
    if group.is_main:
        save(contract, run, config, splits, {"processes": group.world_size, "hosts": contract.host_count,
                                             "data": landmarks.source, "peak_memory_mb": cost.peak_memory_mb})
    group.barrier()


def save(contract: container.Contract, run: train.ScratchRun, config: ScratchConfig, splits: data.Splits,
         job: dict) -> None:
    """Rank 0's record of the run in the model folder (what becomes model.tar.gz)."""
    folder = contract.model_dir
    torchkit.save(run.model.cpu().state_dict(), folder / WEIGHTS)
    best = run.history.best_epoch - 1
    record = {"config": asdict(config), "class_names": splits.class_names, "mean": splits.mean, "std": splits.std,
              "history": asdict(run.history), "train_seconds": run.train_seconds,
              "resumed_epochs": run.resumed_epochs, **job}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    metrics = {"model": "scratch CNN", "parameters": model.count_parameters(run.model), "epochs": config.epochs,
               "best epoch": run.history.best_epoch, "validation accuracy": run.history.valid_accuracy[best],
               "train seconds": run.train_seconds, **job}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def job_config(model_dir: str | Path) -> ScratchConfig:
    """The ScratchConfig the job trained with (overrides included), for the notebook's evaluation."""
    saved = json.loads((Path(model_dir) / RECORD).read_text())["config"]
    return ScratchConfig(**{**saved, "widths": tuple(saved["widths"])})


def load_trained(model_dir: str | Path) -> train.ScratchRun:
    """What a job left in `model_dir` (unpacked model.tar.gz) as the `train.ScratchRun` that
    `train.train_scratch` returns locally: the CNN (best epoch, eval mode) and its history, so the
    notebook's evaluation and export cells run unchanged."""
    model_dir = Path(model_dir)
    if not (model_dir / RECORD).exists():
        raise ValueError(f"{model_dir} holds no trained scratch CNN ({RECORD} and {WEIGHTS})")
    record = json.loads((model_dir / RECORD).read_text())
    config = job_config(model_dir)
    cnn = model.LandmarkCNN(len(record["class_names"]), config.widths, config.blocks_per_stage, config.dropout)
    cnn.load_state_dict(torch.load(model_dir / WEIGHTS, map_location="cpu"))
    cnn = cnn.to(memory_format=torch.channels_last).eval()
    return train.ScratchRun(cnn, train.History(**record["history"]), record["train_seconds"], model_dir,
                            record["resumed_epochs"])


def main(argv: list[str] | None = None) -> None:
    container.run(train_job, __doc__, argv)


if __name__ == "__main__":
    main()
