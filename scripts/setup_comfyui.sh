#!/usr/bin/env bash
# Set up a ComfyUI for the node pack's integration tests (tests/comfyui/), outside the repo.
#
#   scripts/setup_comfyui.sh COMFYUI_DIR [VENV_DIR]
#
# COMFYUI_DIR  a ComfyUI source tree (the tested release is v0.3.64, commit a125cd84). If it does not exist yet and
#              COMFYUI_GIT names a git directory holding that commit (a bare clone is enough), the tree is written
#              from it file by file; blobs missing from a partial clone are skipped (the only large one,
#              comfy/text_encoders/llama_tokenizer/tokenizer.json, matters only for llama-based text encoders).
# VENV_DIR     the virtual environment to create (default: COMFYUI_DIR-venv).
#
# Then: ComfyUI's requirements, torch 2.14.1 + torchvision 0.29.1 (a torchvision that imports beside a CPU-only torch
# wheel does not exist on PyPI, and ComfyUI imports torchvision at start-up), and this repo installed editable, so the
# pack's `import rgd_core` works. The pack itself is linked into COMFYUI_DIR/custom_nodes/rgd.
#
# Run the integration tests afterwards with:
#   RGD_COMFYUI=COMFYUI_DIR VENV_DIR/bin/python -m pytest tests/comfyui -q
set -euo pipefail

comfy_dir=${1:?usage: scripts/setup_comfyui.sh COMFYUI_DIR [VENV_DIR]}
venv=${2:-${comfy_dir%/}-venv}
commit=${COMFYUI_COMMIT:-a125cd84}
repo_root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
start=$(date +%s)

if [ ! -e "$comfy_dir/main.py" ]; then
    git_dir=${COMFYUI_GIT:?"$comfy_dir has no ComfyUI; set COMFYUI_GIT to a git directory holding commit $commit"}
    echo "writing ComfyUI $commit from $git_dir into $comfy_dir"
    mkdir -p "$comfy_dir"
    skipped=0
    # one blob at a time: a partial clone lacks some blobs, and `git archive` would stop at the first
    while IFS=$'\t' read -r info path; do
        set -- $info
        [ "$2" = blob ] || continue
        mkdir -p "$comfy_dir/$(dirname "$path")"
        if ! git --git-dir="$git_dir" cat-file blob "$3" > "$comfy_dir/$path" 2>/dev/null; then
            rm -f "$comfy_dir/$path"
            echo "  skipped (not in this clone): $path"
            skipped=$((skipped + 1))
            continue
        fi
        [ "$1" = 100755 ] && chmod +x "$comfy_dir/$path"
    done < <(git --git-dir="$git_dir" ls-tree -r "$commit")
    echo "  $skipped file(s) skipped"
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
# keep the torch just installed whatever the requirements ask for; `requests` is imported by ComfyUI's frontend
# manager but missing from v0.3.64's requirements.txt
"${pip[@]}" -r "$comfy_dir/requirements.txt" requests -c <(printf 'torch==2.14.1\ntorchvision==0.29.1\n')
"${pip[@]}" -e "$repo_root" -c <(printf 'torch==2.14.1\ntorchvision==0.29.1\n')
"${pip[@]}" pytest

mkdir -p "$comfy_dir/custom_nodes"
if [ ! -e "$comfy_dir/custom_nodes/rgd" ]; then
    ln -s "$repo_root" "$comfy_dir/custom_nodes/rgd"
fi

"$venv/bin/python" -c "import torch, torchvision, comfy_api; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    2>/dev/null || (cd "$comfy_dir" && "$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)")
echo "ComfyUI ready in $comfy_dir, venv $venv ($(( $(date +%s) - start )) s)"
echo "integration tests: RGD_COMFYUI=$comfy_dir $venv/bin/python -m pytest tests/comfyui -q"
