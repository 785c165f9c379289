"""MNIST as a SageMaker training job (or torchrun on one bigger machine): the notebook's `fit`, in DDP.

    python -m mnist_classifier.src.sagemaker_entry [--root /opt/ml]
    torchrun --standalone --nproc_per_node 4 -m mnist_classifier.src.sagemaker_entry --root ...

Reads the training-container contract (`common.container`): the MNIST files from channel "train"
(`<channel>/MNIST/raw/`, the four IDX files as torchvision reads them, .gz or unpacked) and these
hyperparameters (SageMaker hands them over as strings; JSON values are decoded):

    profile       tiny | quick | full (default full): the notebook's profiles (src/config.py)
    experiments   names from src/experiments.py, comma-separated or a JSON list (default: all five)
    train_limit, valid_size, seed, epoch_scale    override the profile's Config
    epochs, batch_size, lr, patience, ...         override every chosen experiment's TrainConfig
    checkpoint_dir                                where checkpoints go (default /opt/ml/checkpoints)

Each experiment trains as the notebook's `results.train_and_report` trains it (seeded the same way,
`train.fit`), with a checkpoint every epoch in `checkpoint_dir/<experiment>_<settings hash>/`, from
which a restarted job (a reclaimed spot instance) continues. Rank 0 writes into the model folder, for
`load_trained`: `<experiment>.pth` (the state_dict, as the notebook saves it), `<experiment>.json`
(history, seconds, peak memory) and `metrics.json` (the run in one table).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common import container, torchkit
from common.profiles import choose
from mnist_classifier.src import data as mnist_data
from mnist_classifier.src.config import PROFILES, Config
from mnist_classifier.src.experiments import EXPERIMENTS, Experiment, experiments
from mnist_classifier.src.model import save_state_dict
from mnist_classifier.src.train import History, TrainConfig, Trained, fit

RESERVED = {"profile", "experiments", "checkpoint_dir"}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Settings:
    profile: str
    config: Config
    plan: tuple[Experiment, ...]


def settings(hyperparameters: dict) -> Settings:
    """The profile's Config and the chosen experiments, with the hyperparameters' overrides."""
    container.check_known(hyperparameters, RESERVED | container.fields_of(PROFILES["tiny"], TrainConfig()))
    profile = str(hyperparameters.get("profile", "full"))
    config = container.override(choose(PROFILES, profile), hyperparameters)
    names = hyperparameters.get("experiments") or [e.name for e in EXPERIMENTS]
    names = names.split(",") if isinstance(names, str) else list(names)
    plan = {e.name: e for e in experiments(config)}
    missing = [name for name in names if name not in plan]
    if missing:
        raise ValueError(f"hyperparameter experiments: unknown {', '.join(missing)}; choose from {', '.join(plan)}")
    chosen = tuple(replace(plan[name], config=container.override(plan[name].config, hyperparameters))
                   for name in names)
    return Settings(profile, config, chosen)


def load_channel(folder: Path, config: Config) -> mnist_data.MnistData:
    """MNIST from a channel in torchvision's layout; a clear error (never the offline stand-in) when the
    files are not there."""
    raw = folder / "MNIST" / "raw"
    missing = [name for name in RAW_FILES if not ((raw / name).exists() or (raw / f"{name}.gz").exists())]
    if missing:
        raise ValueError(f"channel train: {raw} lacks {', '.join(missing)} (.gz or unpacked), the MNIST "
                         "files as torchvision reads them (upload DATA_DIR/mnist/ as the channel)")
    return mnist_data.load_mnist(folder, folder=".", valid_size=config.valid_size, train_limit=config.train_limit,
                                 seed=config.seed)


def checkpoint_folder(root: Path, experiment: Experiment, config: Config) -> Path:
    """One folder per experiment and settings: a job never resumes another configuration's checkpoint."""
    key = json.dumps({"experiment": experiment.name, "train": asdict(experiment.config), "config": asdict(config)},
                     sort_keys=True, default=str)
    return Path(root) / f"{experiment.name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def train(contract: container.Contract, group: container.Distributed) -> None:
    chosen = settings(dict(contract.hyperparameters))
    data = load_channel(contract.channel("train"), chosen.config)
    rows = {}
    for experiment in chosen.plan:
        torchkit.seed_everything(chosen.config.seed)  # as results.train_and_report seeds it
        model = experiment.build()
        with torchkit.measure() as cost:
            history = fit(model, data, experiment.config, device=group.device, seed=chosen.config.seed,
                          name=experiment.name,
                          checkpoint_dir=checkpoint_folder(contract.checkpoint_dir, experiment, chosen.config))
        if group.is_main:
            rows[experiment.name] = save(contract.model_dir, experiment, model.cpu(), history, cost)
    if group.is_main:
        summary = {"profile": chosen.profile, "processes": group.world_size, "hosts": contract.host_count,
                   "data": data.source, "train images": len(data.train), "valid images": len(data.valid),
                   "models": rows}
        (contract.model_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    group.barrier()


def save(model_dir: Path, experiment: Experiment, model, history: History, cost: torchkit.Cost) -> dict:
    """Rank 0's record of one experiment; returns its row of metrics.json."""
    save_state_dict(model, model_dir / f"{experiment.name}.pth")
    record = {"experiment": experiment.name, "train_config": asdict(experiment.config), "history": asdict(history),
              "train_seconds": cost.seconds, "peak_memory_mb": cost.peak_memory_mb}
    (model_dir / f"{experiment.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"epochs run": len(history.epoch), "best epoch": history.best_epoch,
            "valid accuracy": round(max(history.valid_accuracy), 4), "train seconds": cost.seconds}


def load_trained(model_dir: str | Path) -> dict[str, Trained]:
    """What a job left in `model_dir` (unpacked model.tar.gz): {experiment name: Trained}, each model
    built as its experiment builds it with the job's weights, in eval mode, for
    `results.train_and_report(..., trained=...)` to evaluate and export as after a local fit."""
    import torch

    model_dir = Path(model_dir)
    records = sorted(model_dir.glob("*.json"))
    builders = {e.name: e.build for e in EXPERIMENTS}
    trained = {}
    for path in records:
        record = json.loads(path.read_text())
        if "experiment" not in record:
            continue  # metrics.json
        name = record["experiment"]
        model = builders[name]()
        model.load_state_dict(torch.load(model_dir / f"{name}.pth", map_location="cpu"))
        trained[name] = Trained(model.eval(), History(**record["history"]),
                                torchkit.Cost(record["train_seconds"], record["peak_memory_mb"]))
    if not trained:
        raise ValueError(f"{model_dir} holds no trained MNIST model (<experiment>.json and .pth)")
    return trained


def main(argv: list[str] | None = None) -> None:
    container.run(train, __doc__, argv)


if __name__ == "__main__":
    main()
