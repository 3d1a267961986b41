# Raspberry Pi (meta-raspberrypi): camera modules through libcamera, and llama.cpp's
# kernels for the board's cores. Pi 5 (Cortex-A76) has dotprod and fp16 (not i8mm);
# Pi 4 (Cortex-A72) is plain Armv8-A with NEON.
PACKAGECONFIG:append = " libcamera"
# nooelint: oelint.vars.mispell.unknown,oelint.vars.specific - machines from meta-raspberrypi
GGML_CPU_ARM_ARCH:raspberrypi5 = "armv8.2-a+dotprod+fp16"
# nooelint: oelint.vars.mispell.unknown,oelint.vars.specific - machines from meta-raspberrypi
GGML_CPU_ARM_ARCH:raspberrypi4-64 = "armv8-a"
