#!/usr/bin/env bash
# The wheels recipes/gpu_check.sh needs on a GPU machine with no internet, beyond a CUDA
# machine's usual stack (torch, transformers, peft, accelerate, pandas, pyarrow, matplotlib,
# pytest): TRL for the SFTTrainer comparison and what it needs that such a stack lacks. Downloads
# them for that machine's Python (PYVER, default 3.12) into .whl/ (git-ignored; about 2 MB).
# Run it on a machine that reaches PyPI, then carry .whl/ with the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
mkdir -p .whl
for pkg in trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
ls -la .whl
