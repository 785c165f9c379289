"""One switch in the parameters cell trains on SageMaker: the MNIST notebook's own cells, with TRAIN_ON =
"sagemaker" (plus role and bucket) and nothing else changed, run in a kernel where AWS is moto and the
job's container is run from what the job was given (tests/sagemaker_harness.py; moto runs no job).
The notebook's model section then evaluates, reports and exports the model the job trained."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from common import paths
from tests.scones_aws_fixtures import REGION, ROLE

pytestmark = [pytest.mark.slow, pytest.mark.data]

NOTEBOOK = paths.REPO_ROOT / "mnist_classifier" / "mnist_classifier.ipynb"

# The kernel's AWS: moto, a bucket, and SageMaker's part of the job done by the harness.
MOTO_CELL = '''
import os
from pathlib import Path

os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="{region}")
import boto3
from moto import mock_aws

from common import sagemaker_jobs as _jobs
from tests.sagemaker_harness import start_and_run

mock_aws().start()
boto3.client("s3").create_bucket(Bucket="my-bucket")
_jobs.WORK_DIR = Path(r"{work}")
_jobs.start = start_and_run(Path(r"{work}") / "opt_ml", checkpoints=Path(r"{work}") / "checkpoints", show=print)
'''


def _switched(source: str, data_dir: Path, report_dir: Path) -> str:
    """The parameters cell as a user edits it for SageMaker (tiny profile, this test's folders)."""
    edits = {'PROFILE = "full"': 'PROFILE = "tiny"', 'TRAIN_ON = "local"': 'TRAIN_ON = "sagemaker"',
             "SAGEMAKER_ROLE = None": f'SAGEMAKER_ROLE = "{ROLE}"', "SAGEMAKER_BUCKET = None": 'SAGEMAKER_BUCKET = "my-bucket"',
             "DATA_DIR = None": f'DATA_DIR = r"{data_dir}"', "REPORT_DIR = None": f'REPORT_DIR = r"{report_dir}"'}
    for old, new in edits.items():
        assert old in source, f"the parameters cell no longer has {old!r}"
        source = source.replace(old, new)
    return source


def test_the_mnist_notebook_trains_on_sagemaker_with_one_switch(tmp_path, monkeypatch):
    data_dir = paths.data_dir(None).resolve()
    if not (data_dir / "mnist" / "MNIST" / "raw").is_dir():
        pytest.skip(f"needs the MNIST files in DATA_DIR/mnist (set DATA_DIR; {data_dir} has none)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = nb.cells
    training = next(i for i, c in enumerate(cells) if c.source.startswith("plan = experiments(config)"))
    baseline = next(i for i, c in enumerate(cells) if c.source.startswith('result = run("mlp_baseline")'))
    cells[1].source = _switched(cells[1].source, data_dir, tmp_path / "report")
    moto = nbformat.v4.new_code_cell(MOTO_CELL.format(region=REGION, work=tmp_path / "jobs"))
    data = next(i for i, c in enumerate(cells) if c.source.startswith("data = mnist_data.load_mnist("))
    # the parameters, set-up and data cells, then the training cell and the first model's section
    nb.cells = [cells[1], moto, cells[2], cells[data], cells[training], cells[baseline]]
    monkeypatch.setenv("PYTHONPATH", str(paths.REPO_ROOT))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "running mnist_classifier.src.sagemaker_entry from " in printed  # the job's container ran it
    assert ": Completed" in printed and "'training_job': 'mnist-" in printed  # the wait, then the timings
    assert "this run: " in printed  # the baseline section evaluated the job's model on the test set
    exported = tmp_path / "report" / "models"
    assert (exported / "mlp_baseline.onnx").is_file() and (exported / "mlp_baseline.pt").is_file()
    jobs = [p for p in (tmp_path / "jobs").iterdir() if p.name.startswith("mnist-")]
    assert len(jobs) == 1 and sorted(p.name for p in (jobs[0] / "model").glob("*.pth")) == [
        "cnn.pth", "mlp_baseline.pth", "mlp_bn_onecycle.pth", "mlp_bn_onecycle_aug.pth", "mlp_improved.pth"]
