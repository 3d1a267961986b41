# NVIDIA Jetson (meta-tegra): llama.cpp's CUDA backend for the Orin GPU (sm_87) and the
# Argus camera stack for CSI cameras. Cortex-A78AE cores: dotprod, fp16 and i8mm.
PACKAGECONFIG:append = " cuda"
# nooelint: oelint.vars.mispell.unknown - read by llama-cpp-sys-2's build script
GGML_CPU_ARM_ARCH = "armv8.2-a+dotprod+fp16+i8mm"
export CMAKE_CUDA_ARCHITECTURES = "87"
RDEPENDS:${PN}:append = " gstreamer1.0-plugins-nvarguscamerasrc gstreamer1.0-plugins-nvvidconv"
