#!/bin/bash
# Builds llama.cpp (CUDA, sm_90) and check.cpp, runs the check on CPU and GPU.
set -e
cd "$(dirname "$0")"
t0=$(date +%s)
cmake -S llama.cpp -B build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_MTMD=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release > cmake.log 2>&1 || { tail -30 cmake.log; exit 1; }
ninja -C build -j16 llama mtmd > build.log 2>&1 || { grep -m5 -B2 -A8 "error" build.log; tail -5 build.log; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
g++ -O2 -std=c++17 check.cpp -Illama.cpp/include -Illama.cpp/ggml/include -Illama.cpp/tools/mtmd -Lbuild/bin -Lbuild/src -Lbuild/ggml/src -Lbuild/tools/mtmd $(find build -name '*.so' -printf '-L%h ' | tr ' ' '\n' | sort -u | tr '\n' ' ') -lmtmd -lllama -lggml -lggml-base -o check
export LD_LIBRARY_PATH=$(find build -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
for ngl in 0 99; do mkdir -p $OUT/ngl$ngl; ./check m/text.gguf m/mmproj.gguf m/region.gguf m/scene.rgb $ngl $OUT/ngl$ngl 2>$OUT/ngl$ngl/stderr.txt; done
grep -i "cuda\|offload\|CUDA0" $OUT/ngl99/stderr.txt | head -5
