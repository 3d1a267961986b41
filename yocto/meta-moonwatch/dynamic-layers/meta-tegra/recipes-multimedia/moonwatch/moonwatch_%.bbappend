# NVIDIA Jetson (meta-tegra): llama.cpp's CUDA backend for the board's GPU and the Argus
# camera stack for CSI cameras. Orin's Cortex-A78AE cores: dotprod, fp16 and i8mm.
#
# meta-tegra's `cuda` class puts nvcc, the host compiler and the CUDA flags in the
# environment (CUDACXX, CUDAHOSTCXX, CUDAFLAGS, CUDA_PATH), where the CMake that
# llama-cpp-sys-2's build script runs finds them; CMAKE_* variables in the environment
# reach that CMake as cache entries, so the GPU architecture is the machine's
# (CUDA_ARCHITECTURES: 87 for Orin) instead of llama.cpp's list of every architecture.
inherit cuda

PACKAGECONFIG:append = " cuda"
# nooelint: oelint.vars.mispell.unknown - read by llama-cpp-sys-2's build script
GGML_CPU_ARM_ARCH = "armv8.2-a+dotprod+fp16+i8mm"
export CMAKE_CUDA_ARCHITECTURES = "${CUDA_ARCHITECTURES}"
export CMAKE_CUDA_COMPILER = "${CUDA_TOOLKIT_ROOT}/bin/nvcc"
# RTSP cameras decode on the hardware decoder.
RDEPENDS:${PN}:append = " gstreamer1.0-plugins-nvarguscamerasrc gstreamer1.0-plugins-nvvidconv \
    gstreamer1.0-plugins-nvvideo4linux2"
