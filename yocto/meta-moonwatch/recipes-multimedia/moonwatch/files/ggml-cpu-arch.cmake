# Passed to llama.cpp's CMake build (inside llama-cpp-sys-2's build script) as its toolchain
# file. That build script pins GGML_CPU_ARM_ARCH to armv8-a on aarch64 Linux; the cache
# entry forced here restores the machine's architecture (GGML_CPU_ARM_ARCH in the recipe).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR "$ENV{MOONWATCH_CMAKE_PROCESSOR}")
if(DEFINED ENV{GGML_CPU_ARM_ARCH} AND NOT "$ENV{GGML_CPU_ARM_ARCH}" STREQUAL "")
  set(GGML_CPU_ARM_ARCH "$ENV{GGML_CPU_ARM_ARCH}" CACHE STRING "llama.cpp Arm architecture" FORCE)
endif()
