"""Fault injection for the resilience tests; it lives here, never in the library.

`CrashAt` kills the process abruptly, as a power cut would: after step FTLAB_CRASH_AT_STEP, or while checkpoint
FTLAB_CRASH_IN_SAVE_AT_STEP is being written (its files there, its completion mark not yet). Tests add it to an
in-process trainer directly; for a notebook run in a kernel, `sitecustomize.py` beside this file registers it
through `ftlab.train.add_callback` when the kernel starts with this folder on PYTHONPATH (`conftest.crash_at`).
"""

from __future__ import annotations

import os

from transformers import TrainerCallback


class CrashAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if os.environ.get("FTLAB_CRASH_AT_STEP") == str(state.global_step):
            os._exit(137)

    def on_save(self, args, state, control, **kw):
        if os.environ.get("FTLAB_CRASH_IN_SAVE_AT_STEP") == str(state.global_step):
            os._exit(137)
