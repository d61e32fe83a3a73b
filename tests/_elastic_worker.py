"""The worker torchrun starts in test_elastic.py: `fastdino train`, with one worker killed once.

With FASTDINO_TEST_KILL_ONCE=<marker file> set, the worker that writes the run's first mid-epoch step checkpoint of
epoch 1 (rank 0: it alone saves) kills itself with SIGKILL right after saving, as a node failure would, and leaves
the marker so that the restarted group runs through.
"""

import os
import signal
import sys
from pathlib import Path

from fastdino import checkpoint as ckpt_io
from fastdino.cli import main

_marker = os.environ.get("FASTDINO_TEST_KILL_ONCE")
_save_last = ckpt_io.save_last


def _save_then_die(state, folder):
    path = _save_last(state, folder)
    if state["epoch"] == 1 and state["batch"] > 0 and not Path(_marker).exists():
        Path(_marker).write_text(f"killed after epoch {state['epoch']} batch {state['batch']}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return path


if _marker:
    ckpt_io.save_last = _save_then_die

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
