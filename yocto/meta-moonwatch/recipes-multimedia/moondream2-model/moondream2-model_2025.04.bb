SUMMARY = "Moondream2 vision-language model, GGUF (text model and vision projector)"
DESCRIPTION = "The Moondream2 GGUF pair that moonwatch runs through llama.cpp, installed \
where moonwatch's default configuration expects it."
HOMEPAGE = "https://huggingface.co/moondream/moondream2-gguf"
SECTION = "multimedia"
LICENSE = "Apache-2.0"
# The GGUF downloads carry no license file; the model card states Apache-2.0.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

MOONDREAM2_REVISION ?= "66f21bff432b523f311e72d4e34cf1925ae75210"
MOONDREAM2_BASE = "https://huggingface.co/moondream/moondream2-gguf/resolve/${MOONDREAM2_REVISION}"

SRC_URI = "${MOONDREAM2_BASE}/moondream2-text-model-f16.gguf;name=text;unpack=0;downloadfilename=moondream2-text-model-f16-${PV}.gguf \
           ${MOONDREAM2_BASE}/moondream2-mmproj-f16.gguf;name=mmproj;unpack=0;downloadfilename=moondream2-mmproj-f16-${PV}.gguf"
# The SHA-256 of each file at MOONDREAM2_REVISION, as the hub lists them and as
# `moonwatch model pull` prints after verifying a download. Set them in local.conf or a
# bbappend; the fetcher refuses files that do not match.
SRC_URI[text.sha256sum] = "${MOONDREAM2_TEXT_SHA256}"
SRC_URI[mmproj.sha256sum] = "${MOONDREAM2_MMPROJ_SHA256}"
MOONDREAM2_TEXT_SHA256 ??= ""
MOONDREAM2_MMPROJ_SHA256 ??= ""

# Refuse to build without checksums rather than fetch 3.7 GB unverified.
# nooelint: oelint.task.noanonpython
python () {
    for var in ("MOONDREAM2_TEXT_SHA256", "MOONDREAM2_MMPROJ_SHA256"):
        if len(d.getVar(var) or "") != 64:
            raise bb.parse.SkipRecipe("set %s to the file's SHA-256 (see meta-moonwatch/README.md)" % var)
}

# The downloads are copied (not unpacked) into the unpack directory.
S = "${UNPACKDIR}"

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${localstatedir}/lib/moonwatch/models
    install -m 0644 ${S}/moondream2-text-model-f16-${PV}.gguf ${D}${localstatedir}/lib/moonwatch/models/moondream2-text-model-f16.gguf
    install -m 0644 ${S}/moondream2-mmproj-f16-${PV}.gguf ${D}${localstatedir}/lib/moonwatch/models/moondream2-mmproj-f16.gguf
}

FILES:${PN} += "${localstatedir}/lib/moonwatch/models"
