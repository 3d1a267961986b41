SUMMARY = "Edge vision daemon: Moondream2 on llama.cpp, cameras in, MQTT out"
DESCRIPTION = "moonwatch turns a board with a camera into a smart camera: it runs the \
Moondream2 vision-language model through llama.cpp on V4L2 or GStreamer frames and answers \
questions, captions, detects objects and keeps yes/no triggers over MQTT, with Home \
Assistant discovery."
HOMEPAGE = "https://github.com/moonwatch/moonwatch"
BUGTRACKER = "https://github.com/moonwatch/moonwatch/issues"
SECTION = "multimedia"
LICENSE = "Apache-2.0 & MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57 \
                    file://assets/gpt2/LICENSE;md5=8d10c459f92a928b3e682c71da0e2899"

# llama.cpp is built by llama-cpp-sys-2's build script with CMake; bindgen needs libclang.
DEPENDS += "clang-native \
            cmake-native \
            gstreamer1.0 \
            gstreamer1.0-plugins-base"

PV = "0.1.0+git"
SRC_URI = "git://github.com/moonwatch/moonwatch.git;protocol=https;branch=main \
           file://ggml-cpu-arch.cmake"
# A commit of main; the kas files build from the checkout instead (externalsrc).
SRCREV = "215cc4e31776233a9941595c17070e6abe4c346e"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

PACKAGECONFIG ??= "v4l2 rtsp"
# GStreamer plugins for the camera presets (the GStreamer core is always needed).
PACKAGECONFIG[v4l2] = ",,,gstreamer1.0-plugins-good-video4linux2 gstreamer1.0-plugins-good-jpeg"
# RTSP and its RTP depayloaders; the H.264/H.265 decoder comes from the board (Jetson:
# nvv4l2decoder) or from `libav` below.
PACKAGECONFIG[rtsp] = ",,,gstreamer1.0-plugins-good-rtsp gstreamer1.0-plugins-good-rtp"
# FFmpeg's software decoders for RTSP cameras on boards without a hardware decoder (the
# Pi 5 decodes only HEVC in hardware). gstreamer1.0-libav carries the `commercial` licence
# flag: a build that wants it accepts it explicitly (LICENSE_FLAGS_ACCEPTED).
PACKAGECONFIG[libav] = ",,,gstreamer1.0-libav"
PACKAGECONFIG[libcamera] = ",,,libcamera-gst"
# llama.cpp's CUDA backend (NVIDIA Jetson, meta-tegra; its `cuda` class is inherited by the
# meta-tegra dynamic layer).
PACKAGECONFIG[cuda] = ",,cuda-cudart libcublas"

# nooelint: oelint.vars.mispell.unknown - cargo feature list of this recipe
CARGO_FEATURES = "${@bb.utils.contains('PACKAGECONFIG', 'cuda', 'cuda', '', d)}"
CARGO_BUILD_FLAGS += "${@'--features ' + d.getVar('CARGO_FEATURES') if d.getVar('CARGO_FEATURES') else ''}"

# llama.cpp's CPU kernels for the target core (see the layer README); machine overrides
# in the dynamic layers set it for Raspberry Pi and Jetson.
# The `dist` profile's whole-program optimisation, applied to the release build the cargo
# class runs (symbols are kept: the -dbg package gets them).
export CARGO_PROFILE_RELEASE_LTO = "fat"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS = "1"

# nooelint: oelint.vars.mispell.unknown - read by llama-cpp-sys-2's build script
GGML_CPU_ARM_ARCH ??= ""
export GGML_CPU_ARM_ARCH
# llama-cpp-sys-2 pins armv8-a on aarch64 Linux; this toolchain file (read by the cmake
# crate) restores GGML_CPU_ARM_ARCH for llama.cpp.
export TARGET_CMAKE_TOOLCHAIN_FILE = "${UNPACKDIR}/ggml-cpu-arch.cmake"
export MOONWATCH_CMAKE_PROCESSOR = "${TARGET_ARCH}"
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system moonwatch"
USERADD_PARAM:${PN} = "--system --gid moonwatch --groups video --home-dir ${localstatedir}/lib/moonwatch \
    --no-create-home --shell /sbin/nologin moonwatch"

SYSTEMD_SERVICE:${PN} = "moonwatch.service"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    # A fixed system user instead of DynamicUser: images are built with the user in place.
    sed -e 's|^DynamicUser=yes|User=moonwatch\nGroup=moonwatch|' \
        ${S}/systemd/moonwatch.service > ${D}${systemd_system_unitdir}/moonwatch.service
    chmod 0644 ${D}${systemd_system_unitdir}/moonwatch.service
    install -D -m 0644 ${S}/configs/moonwatch.toml ${D}${sysconfdir}/moonwatch/moonwatch.toml
    install -D -m 0644 ${S}/docs/mqtt-api.md ${D}${docdir}/${BPN}/mqtt-api.md
    install -d -o moonwatch -g moonwatch -m 0750 ${D}${localstatedir}/lib/moonwatch
}

FILES:${PN} += "${systemd_system_unitdir}/moonwatch.service ${localstatedir}/lib/moonwatch"
CONFFILES:${PN} = "${sysconfdir}/moonwatch/moonwatch.toml"

RDEPENDS:${PN} += "gstreamer1.0-plugins-base-app \
                   gstreamer1.0-plugins-base-playback \
                   gstreamer1.0-plugins-base-typefindfunctions \
                   gstreamer1.0-plugins-base-videoconvertscale \
                   gstreamer1.0-plugins-base-videorate \
                   gstreamer1.0-plugins-base-videotestsrc"
# The model package exists once its checksums are set (its recipe skips itself until
# then); until then the device fetches the files with `moonwatch model pull`.
RRECOMMENDS:${PN} += "${@'moondream2-model' if len(d.getVar('MOONDREAM2_TEXT_SHA256') or '') == 64 and len(d.getVar('MOONDREAM2_MMPROJ_SHA256') or '') == 64 else ''}"
