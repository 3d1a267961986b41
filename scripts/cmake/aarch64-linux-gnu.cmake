# CMake toolchain for cross-building llama.cpp (through llama-cpp-sys-2) for aarch64 Linux.
# llama-cpp-sys-2's build script pins GGML_CPU_ARM_ARCH to armv8-a on aarch64 Linux; the
# cache entry forced here replaces it with the board's architecture from the environment,
# so llama.cpp gets its int8 dot-product (and i8mm) kernels where the cores have them.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
if(DEFINED ENV{GGML_CPU_ARM_ARCH} AND NOT "$ENV{GGML_CPU_ARM_ARCH}" STREQUAL "")
  set(GGML_CPU_ARM_ARCH "$ENV{GGML_CPU_ARM_ARCH}" CACHE STRING "llama.cpp Arm architecture" FORCE)
endif()
