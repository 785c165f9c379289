"""Serve exported image models with ONNX Runtime; export and check them from PyTorch.

Serving (`load_onnx`, `OnnxModel.run`) needs only `onnxruntime` and `numpy`: this module imports
no torch at import time, so a server or predictor built on it starts in a fraction of a second
and fits a ~200 MB container (torch with its dependencies is gigabytes). Measured on 2 cores,
ONNX Runtime ran the three image models 3-6x faster than TorchScript, which torch 2.15
deprecates.

What a predictor needs besides the graph (class names, the input contract, normalisation, the
model's name and the run that trained it) travels inside the .onnx file as metadata, each value
JSON-encoded, so one file is the whole deployable model.

Export (`export_onnx`) uses the dynamo exporter, then runs the file against the eager module on
the inputs it is given (several sizes: a graph can silently freeze a size the example had) and
raises `ExportMismatch` when they differ. Training stays in PyTorch; `save_torchscript` keeps
the seed's TorchScript files for users of the original course.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the serving path must not import torch
    import onnxruntime
    import torch


class ModelFileError(ValueError):
    """An exported model file is missing, unreadable or lacks what its predictor needs."""


class ExportMismatch(AssertionError):
    """The exported file disagrees with the eager model it came from."""


def _restore_modes(module: torch.nn.Module):
    """A function that puts every submodule back in the train/eval mode it has now.

    Export needs eval mode; a wrapper built for export (new, so in train mode) around a model in
    eval mode must not leave that model in train mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    return lambda: [m.train(mode) for m, mode in modes]


def _atomic_target(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_name(f".{path.name}.{os.getpid()}.tmp")


# ---------------------------------------------------------------------------------- serving

@dataclass
class OnnxModel:
    """One ONNX Runtime session, created once and reused for every request."""
    path: Path
    session: onnxruntime.InferenceSession
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    @property
    def input_type(self) -> str:
        return self.session.get_inputs()[0].type  # e.g. "tensor(uint8)"

    @property
    def class_names(self) -> list[str]:
        try:
            return list(self.metadata["class_names"])
        except KeyError:
            raise ModelFileError(f"{self.path}: the model's metadata has no 'class_names'") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's first output for one input batch (dtype and layout as the metadata's 'input' says)."""
        return self.session.run(None, {self.input_name: batch})[0]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for one input batch, by output name."""
        names = [output.name for output in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, {self.input_name: batch})))


def session_options(threads: int = 1, spinning: bool = False) -> onnxruntime.SessionOptions:
    """`threads` intra-op threads, one inter-op thread.

    Spinning is off by default: on shared, busy cores spinning worker threads starve each other
    (the same effect as PyTorch's OpenMP spinning, which made training 100x slower here)."""
    import onnxruntime as ort

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    return options


def load_onnx(path: str | Path, *, threads: int = 1, spinning: bool = False) -> OnnxModel:
    """An exported model, ready to run on the CPU; ModelFileError names the file when it cannot be."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(threads, spinning),
                                       providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...)
        raise ModelFileError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {err})") from None
    raw = session.get_modelmeta().custom_metadata_map
    return OnnxModel(path, session, _decode_metadata(raw, path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported model, without creating a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001
        raise ModelFileError(f"{path}: not an ONNX file ({err})") from None
    return _decode_metadata({p.key: p.value for p in model.metadata_props}, path)


def _decode_metadata(raw: dict[str, str], path: Path) -> dict[str, Any]:
    decoded = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ModelFileError(f"{path}: metadata {key!r} is not JSON: {value[:80]!r}") from None
    return decoded


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------------- export

def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path, *,
                metadata: dict[str, Any], dynamic_hw: bool = False,
                check_inputs: Sequence[torch.Tensor] = (), atol: float = 1e-4,
                output_names: Sequence[str] = ("output",)) -> Path:
    """Export `module` (eager, eval mode) to `path` with the dynamo exporter and verify it.

    The batch dimension is always dynamic; `dynamic_hw` makes height and width dynamic too (for
    models that take an image of any size and resize it themselves). `metadata` values are stored
    JSON-encoded. `output_names` names the module's outputs (one per tensor it returns, in order).
    The file is compared with the eager module on `example` and every tensor in
    `check_inputs` (use several sizes and batch sizes): ExportMismatch if any output differs by
    more than `atol` (relative to the output's magnitude where that is above 1). Written atomically: a failed export leaves any previous file in place."""
    import onnx
    import torch

    restore = _restore_modes(module)
    module = module.cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims: dict[int, Any] = {0: batch}
    if dynamic_hw:
        dims.update({2: torch.export.Dim("height", min=2, max=16384),
                     3: torch.export.Dim("width", min=2, max=16384)})
    path, tmp = _atomic_target(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["input"],
                                    output_names=list(output_names), dynamic_shapes=({k: v for k, v in dims.items()},),
                                    optimize=True, verbose=False, report=False)
    model = program.model_proto
    # The exporter records each node's Python stack trace (source paths of this machine); a
    # deployable file needs none of it.
    for graph_nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in graph_nodes:
            del node.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    try:
        onnx.save_model(model, str(tmp))
        verify_onnx(tmp, module, [example, *check_inputs], atol=atol)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        restore()
    return path


def verify_onnx(path: str | Path, module: torch.nn.Module, inputs: Sequence[torch.Tensor], *,
                atol: float = 1e-4) -> float:
    """Largest absolute difference between the ONNX file and the eager module over `inputs`.

    Raises ExportMismatch naming the input's shape when any output differs by more than `atol`."""
    session = load_onnx(path)
    restore = _restore_modes(module)
    module.eval()
    try:
        return _compare(path, session, module, inputs, atol)
    finally:
        restore()


def _compare(path: str | Path, session: OnnxModel, module: torch.nn.Module, inputs: Sequence[torch.Tensor],
             atol: float) -> float:
    import torch

    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            eager = module(x)
        eager = eager if isinstance(eager, (tuple, list)) else (eager,)
        for (name, got), expected in zip(session.run_all(x.numpy()).items(), eager):
            expected = expected.float().numpy()
            if got.shape != expected.shape:
                raise ExportMismatch(f"{path}: output {name!r} shape {got.shape} != eager {expected.shape} "
                                     f"for input {tuple(x.shape)}")
            # relative to the output's scale: a score in the thousands agrees to 1e-4 of itself
            diff = float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max()) if got.size else 0.0
            if not diff <= atol:
                raise ExportMismatch(f"{path}: output {name!r} differs from the eager model by {diff:.3g} "
                                     f"(> {atol:g}) for input {tuple(x.shape)} {x.dtype}")
            worst = max(worst, diff)
    return worst


def save_torchscript(module: torch.nn.Module, path: str | Path,
                     example: torch.Tensor | None = None) -> tuple[Path, str]:
    """Write a TorchScript file (the seed's format); returns (path, "scripted" or "traced").

    Scripts the module when TorchScript can compile it, else traces it on `example`. torch 2.15
    deprecates torch.jit (FutureWarning on every call): the file is kept for users of the
    original course; serving uses the ONNX file."""
    import torch

    restore = _restore_modes(module)
    module = module.cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            compiled, how = torch.jit.script(module), "scripted"
        except Exception:  # noqa: BLE001 - TorchScript raises many types for unsupported Python
            if example is None:
                raise
            compiled, how = torch.jit.trace(module, example, check_trace=False), "traced"
        path, tmp = _atomic_target(path)
        try:
            compiled.save(str(tmp))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
            restore()
    return path, how


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript file on the CPU, in eval mode (ModelFileError names a missing file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
