#!/usr/bin/env bash
# For a CUDA machine with no package index: copy to .gpu/scripts/ beside the offline CUDA bundle
# (.gpu/scripts/install.sh and its parts: fbgemm-gpu, torchrec and the runtime packages, packed by
# the maintainers' tooling, which is not part of this repository) and .gpu/extra.tar.xz (the test
# dependencies the CUDA machine lacks), then run it there with $OUT set.
# The CUDA checks of issue 11, in one run: both engines' CUDA exactness tests, the engine
# benchmark on the GPU and a profile of the local engine. Writes what it saw under $OUT.
set -u
bash .gpu/scripts/install.sh || exit 1
mkdir -p /tmp/extra && tar -xJf .gpu/extra.tar.xz -C /tmp/extra
python3 -c "import numpy" 2>/dev/null && NP="" || NP=":/tmp/extra/numpy"
export PYTHONPATH=/tmp/site:$PWD:/tmp/extra/site$NP
nproc
timeout 200 python3 -m pytest -q --noconftest -p no:cacheprovider tests/distributed/test_exactness.py -k cuda -rA 2>&1 | grep -E "PASSED|FAILED|ERROR|passed|failed|Error" | tee $OUT/cuda_tests.txt
timeout 150 python3 benchmarks/engine_bench.py --device cuda --no-distributed --out $OUT/engine_bench_cuda.json 2>&1 | grep -v "fx_tracing\|Warn\|compat\|WARNING\|\[0m\|\[33m\|^\s*$" | tee $OUT/engine_bench_cuda.txt
timeout 120 python3 benchmarks/cuda/profile_cuda.py 2>&1 | grep -v "fx_tracing\|Warn\|compat\|WARNING\|\[0m\|\[33m\|^\s*$" | tee $OUT/profile_cuda.txt
