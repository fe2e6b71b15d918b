"""Launched once by tests/test_data_parallel.py on two processes (torch.distributed.run, gloo on
the CPU), so the processes and their process group start once for both checks: the cache fill and a
cross-dataset cell (`two_process_cell.py`), then a stop asked of one process (`two_process_stop.py`).

usage: python two_process_checks.py OUT IMAGE_FOLDER DATA RUN_DIR SWEEP_ARGS...
"""

from __future__ import annotations

import sys
from pathlib import Path

import two_process_cell
import two_process_stop

if __name__ == "__main__":
    out, image_folder, data, run_dir, *sweep = sys.argv[1:]
    code = two_process_cell.run(Path(out), Path(image_folder), sweep)
    two_process_stop.run(Path(data), Path(run_dir), Path(out))
    sys.exit(code)
