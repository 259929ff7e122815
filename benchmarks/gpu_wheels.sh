#!/usr/bin/env bash
# The wheels an offline GPU machine (Python 3.12, x86_64; torch, transformers, peft, accelerate, triton, pandas,
# pyarrow already there) needs to run the whole series (`python -m ftlab run`, benchmarks/gpu_series.py), into .whl/
# (git-ignored), trimmed to fit a 64 MiB working-tree transfer (~34 MB). Needs `make setup` first: the local
# llama-cpp-python wheel (portable CPU build) is taken from pip's cache. Also copies the embedded model's tokenizer
# files into .gputok/ (gpu_series.py build --tokenizer .gputok).
# On the GPU machine, first thing in the command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/lib:$PWD/benchmarks PYTHONUNBUFFERED=1 FTLAB_OUTPUTS=/tmp/out HF_HUB_OFFLINE=1
# and carry .whl, .gputok and .cache/ftlab/llama.cpp-<version> (the GGUF converter `make setup` fetched).
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .whl .gputok
plat="--platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for n in 28 27 26 24 17; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
pin() { grep -i "^$1==" requirements.lock || { echo "$1 is not in requirements.lock" >&2; exit 1; }; }
# training (bitsandbytes, trl, datasets, liger), the notebooks (papermill + kernel), scoring, lm-eval, llama.cpp's server
names="bitsandbytes trl datasets dill multiprocess papermill ipykernel ipython ipython_pygments_lexers jupyter_client
jupyter_core pyzmq tornado traitlets nbformat nbclient fastjsonschema jsonschema jsonschema-specifications referencing
rpds-py ipywidgets widgetsnbextension jupyterlab_widgets comm debugpy matplotlib-inline nest-asyncio2 jedi parso
prompt_toolkit wcwidth pexpect ptyprocess stack-data executing asttokens pure_eval platformdirs entrypoints tenacity nltk
gguf diskcache evaluate lm_eval pytablewriter DataProperty mbstrdecoder typepy tabledata tcolorpy pathvalidate chardet
more-itertools fastapi starlette uvicorn sse-starlette starlette-context pydantic pydantic_core pydantic-settings
annotated-types typing-inspection python-dotenv pytz tzdata opentelemetry-api importlib_metadata"
pins="liger-kernel==0.8.5"  # GPU-only, not in the CPU lock
for n in $names; do pins="$pins $(pin "$n")"; done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whl $pins
# pure-Python packages published only as source distributions
# shellcheck disable=SC2046
python3 -m pip wheel -q --no-deps -w .whl $(pin sqlitedict) $(pin word2number) $(pin rouge_score)
llama=$(find ~/.cache/pip -name "llama_cpp_python-$(pin llama_cpp_python | cut -d= -f3)-*.whl" | head -1)
[ -n "$llama" ] || { echo "no llama-cpp-python wheel in pip's cache: run make setup first" >&2; exit 1; }
cp "$llama" .whl/
cd .whl
# trims: bitsandbytes keeps its CPU and CUDA 13.0 libraries; lm_eval drops its ~200 bundled task folders (the series
# uses data/lm_eval); llama-cpp-python drops the duplicate lib/ and include/ trees and versioned .so copies
bnb=$(ls bitsandbytes-*.whl)
zip -q -d "$bnb" $(unzip -Z1 "$bnb" | grep "libbitsandbytes_" | grep -v "_cpu.so\|_cuda130.so") >/dev/null
zip -q -d lm_eval-*.whl 'lm_eval/tasks/*/*' >/dev/null
zip -q -d debugpy-*.whl 'debugpy/_vendored/pydevd/pydevd_attach_to_process/*' >/dev/null || true
lw=$(ls llama_cpp_python-*.whl)
zip -q -d "$lw" 'lib/*' 'include/*' $(unzip -Z1 "$lw" | grep -E 'llama_cpp/lib/.*\.so\.[0-9]+\.[0-9]') >/dev/null
cd "$root"
cp .cache/ftlab/smollm2-135m/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .gputok/
du -sh .whl .gputok
