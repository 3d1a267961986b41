#!/usr/bin/env bash
# moonwatch end to end: build, get the model, look at a picture and answer questions.
#   scripts/demo.sh [IMAGE]
# Without IMAGE, a test pattern is made with GStreamer. The real Moondream2 GGUFs are
# downloaded when the network allows; otherwise a random-weight model with the same
# architecture is generated and used (its answers are gibberish, and it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
moonwatch_setup
cargo build --release --locked
bin="$CARGO_TARGET_DIR/release/moonwatch"
models="${MOONWATCH_MODELS:-/var/lib/moonwatch/models}"

if "$bin" model pull --config configs/moonwatch.toml --dir "$models"; then
  text="$models/moondream2-text-model-f16.gguf"
  mmproj="$models/moondream2-mmproj-f16.gguf"
else
  echo
  echo "moonwatch: the real model could not be downloaded (see above)."
  echo "moonwatch: using a generated RANDOM-WEIGHT test model instead: same architecture,"
  echo "moonwatch: same code path, but its answers are gibberish."
  echo
  "$bin" model synth --size tiny --out "$models/random-test" >/dev/null
  text="$models/random-test/moondream2-text-model-f16.gguf"
  mmproj="$models/random-test/moondream2-mmproj-f16.gguf"
fi

image="${1:-}"
if [ -z "$image" ]; then
  image="${TMPDIR:-/tmp}/moonwatch-demo.jpg"
  gst-launch-1.0 -q videotestsrc num-buffers=1 pattern=smpte ! \
    video/x-raw,width=640,height=480 ! jpegenc ! filesink location="$image"
fi

model=(--model "$text" --mmproj "$mmproj")
echo "== caption of $image"
"$bin" caption "${model[@]}" --image "$image"
echo "== two questions about the same picture (the second reuses the encoded image)"
"$bin" ask "${model[@]}" --image "$image" --json "What is in this picture?" "Is there a person?"
echo "== yes/no with confidence"
"$bin" yes-no "${model[@]}" --image "$image" "Is this a test pattern?"
echo "== detection"
"$bin" detect "${model[@]}" --image "$image" "colour bar"
