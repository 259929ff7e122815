"""Data people bring, made trainable: reading files and reporting bad lines (`readers`), record layouts and their
detection (`formats`, `turns`, `reasons`), the chat-template audit and tokenizing (`template_audit`), rows, splits and
checks (`rows`, re-exported here: `from ftlab import data; data.load(...)`) and stage 01's steps (`preparation`).

May import `ftlab.core`, `ftlab.hardware` and `ftlab.models`.
"""

from ftlab.data.rows import *  # noqa: F403  (the rows API: data.load, data.split, data.Row, ...)
