"""Jobs for test_warm's servers (a function the forked child runs instead of the librarm CLI)."""
from __future__ import annotations

import os
import time


def sleep_and_record_pid(argv):
    """argv: ["stage", PID_FILE]: writes the job's pid there and sleeps until killed."""
    with open(argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
    return 0


def write_torch_threads(argv):
    """argv: ["stage", OUT_FILE]: writes torch's intra-op thread count there."""
    import torch

    with open(argv[1], "w") as f:
        f.write(str(torch.get_num_threads()))
    return 0
