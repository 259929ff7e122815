#!/usr/bin/env bash
# Unsloth and the pins it needs, for benchmarks/speed.py's Unsloth runs on the offline GPU machine (Python 3.12,
# x86_64; torch, transformers, peft, accelerate, triton, pandas, pyarrow already there), into .whlu/ (git-ignored).
# Unsloth pins older trl and datasets than the project does, so it gets its own site, put first on the PYTHONPATH of
# its runs only (speed.py --unsloth-site). Unsloth's wheel is trimmed of studio/ and unsloth_cli/ (its web UI and CLI,
# ~25 MB) to fit the 64 MiB working-tree transfer beside .whl/ (benchmarks/gpu_wheels.sh).
# On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/usite .whlu/*.whl
# and pass --unsloth-site /tmp/usite; carry .whlu beside .whl.
set -eu
root=$(git rev-parse --show-toplevel)
cd "$root"
rm -rf .whlu && mkdir -p .whlu
plat="--platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for n in 28 27 26 24 17; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
pins="unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 torchao==0.18.0 cut_cross_entropy==25.1.1
tyro==0.9.35 docstring-parser==0.17.0 shtab==1.7.2 typeguard==4.4.4 msgspec==0.19.0 sentencepiece==0.2.1 einops==0.8.1
hf_transfer==0.1.9 dill==0.4.0 multiprocess==0.70.18 xxhash==3.6.0"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .whlu $pins
cd .whlu
zip -q -d unsloth-*.whl 'studio/*' 'unsloth_cli/*' >/dev/null
cd "$root"
du -sh .whlu
