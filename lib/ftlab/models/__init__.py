"""Models: loading a base model and its tokenizer (`loading`, re-exported here: `models.load_model(...)`), greedy and
batched generation (`generate`), attention kernels (`attention`) and the llama.cpp server a GGUF is scored through
(`llama_server`).

May import `ftlab.core` and `ftlab.hardware`.
"""

from ftlab.models.loading import *  # noqa: F403  (models.load_model, models.load_tokenizer, ...)
