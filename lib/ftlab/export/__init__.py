"""Stage 04's export: `merge` (adapter into a 16/32-bit base, and its check), `gguf` (llama.cpp's converter and
quantizer, and checks in llama.cpp), `ollama` (a Modelfile whose template is proved equal to the chat template),
`card` (the model card). The targets are listed in the registry (`ftlab.core.stages.EXPORT_TARGETS`).
"""

from ftlab.core.paths import folder_mb
from ftlab.export.card import compute_record, evaluated_card, export_summary, model_card, write_card
from ftlab.export.errors import ExportError, timed
from ftlab.export.gguf import (
    CONVERTER_TYPES,
    GgufCheck,
    build_ggufs,
    convert,
    judge,
    native_output_to,
    quantize,
    record_checks,
    toolchain,
    verify_all,
    verify_gguf,
)
from ftlab.export.merge import check_merge, greedy_tokens, merge, stopped_share, verify_merge
from ftlab.export.ollama import (
    TemplatePieces,
    check_ollama_template,
    modelfile,
    ollama_commands,
    ollama_template,
    parse_modelfile,
    preferred_gguf,
    render_go_template,
    stop_strings,
    template_pieces,
    write_modelfile,
)

__all__ = [
    "CONVERTER_TYPES",
    "ExportError",
    "GgufCheck",
    "TemplatePieces",
    "build_ggufs",
    "check_merge",
    "check_ollama_template",
    "compute_record",
    "convert",
    "evaluated_card",
    "export_summary",
    "folder_mb",
    "greedy_tokens",
    "judge",
    "merge",
    "model_card",
    "modelfile",
    "native_output_to",
    "ollama_commands",
    "ollama_template",
    "parse_modelfile",
    "preferred_gguf",
    "quantize",
    "record_checks",
    "render_go_template",
    "stop_strings",
    "stopped_share",
    "template_pieces",
    "timed",
    "toolchain",
    "verify_all",
    "verify_gguf",
    "verify_merge",
    "write_card",
    "write_modelfile",
]
