"""Imported by Python at start-up when tests put this folder on PYTHONPATH (see `conftest.crash_at`): a notebook
kernel started then gets the test's fault injector in every trainer. Does nothing unless a crash variable is set."""

import os

if os.environ.get("FTLAB_CRASH_AT_STEP") or os.environ.get("FTLAB_CRASH_IN_SAVE_AT_STEP"):
    from ftlab_faults import CrashAt

    from ftlab.train import add_callback

    add_callback(CrashAt)
