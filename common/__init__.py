"""The portfolio's shared library (see README): imported first by every notebook, test and script."""
import os

# PyTorch's OpenMP worker threads spin while they wait for work. When the cores are busy with
# other processes (a shared CI machine, a notebook next to a test run) the spinning threads starve
# each other: measured on 2 busy cores, the baseline MLP trained at 203 images/s with spinning
# and 17,885 with passive waiting. The policy must be set before torch loads OpenMP, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
