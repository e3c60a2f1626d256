#!/usr/bin/env bash
# Set up a Stable Diffusion WebUI Forge that runs headless on a CPU, outside the repo, for the rgd extension
# (docs: /work/shared/docs/forge_a1111.md sections 8, 9 and 12).
#
#   scripts/setup_forge.sh FORGE_DIR [VENV_DIR]
#
# FORGE_DIR  a Forge source tree (the tested one is commit dfdcbab6, version f2.0.1v1.10.1-1.10.1, Gradio 4.40.0).
#            If FORGE_DIR/launch.py does not exist yet, FORGE_GIT must name a git directory holding FORGE_COMMIT
#            (default dfdcbab6; a bare clone is enough) and the tree is written from it.
# VENV_DIR   the virtual environment to create (default: FORGE_DIR-venv), with PYTHON (default python3.11).
#
# FORGE_DIR/repositories/ gets the three repositories Forge's prepare_environment() would clone there. Launching
# with --skip-prepare-environment (offline) never clones, so they are written here from git directories, at the
# commits that FORGE_DIR/modules/launch_utils.py pins (Forge's own *_COMMIT_HASH / HUGGINGFACE_GUESS_HASH
# variables override them, as they do for Forge):
#   ASSETS_GIT             -> repositories/stable-diffusion-webui-assets
#   HUGGINGFACE_GUESS_GIT  -> repositories/huggingface_guess
#   BLIP_GIT               -> repositories/BLIP
# Each is needed only while its folder is missing. Trees are written with `git archive`, or file by file when a
# partial clone lacks a blob (BLIP.gif is missing from some clones; nothing reads it), skipping those blobs.
#
# Then the venv: torch 2.14.1 + torchvision 0.29.1 first (Forge's requirements leave torchvision unpinned, and
# pip then swaps the CPU torch for a CUDA build; older CPU torch/torchvision pairs fail `import torchvision`, which
# Forge does at start-up), Forge's requirements_versions.txt, then rgd's own runtime dependencies (pyproject.toml)
# constrained to what is installed by then, so numpy, transformers, diffusers, safetensors, gradio and every other
# Forge pin stay as they are: the extension runs rgd_core inside Forge's Python. rgd is not pip-installed: Forge
# finds the extension through its folder, FORGE_DIR/extensions/rgd, a link to this repo.
#
# Re-running skips what is done: existing trees are kept, and each pip step records its inputs in
# VENV_DIR/.rgd-setup/ and runs again only when they change.
set -euo pipefail

forge_dir=${1:?usage: scripts/setup_forge.sh FORGE_DIR [VENV_DIR]}
forge_dir=${forge_dir%/}
venv=${2:-$forge_dir-venv}
venv=${venv%/}
commit=${FORGE_COMMIT:-dfdcbab6}
python=${PYTHON:-python3.11}  # Forge targets 3.10; every pin of dfdcbab6 installs on 3.11, which is what runs here
torch_pins=(torch==2.14.1 torchvision==0.29.1)
repo_root=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { echo "[$(( $(date +%s) - start )) s] $*"; }

# write_tree GIT_DIR COMMIT DEST: DEST appears only once complete, so an interrupted run is redone, not kept
write_tree() {
    local git_dir=$1 rev=$2 dest=$3 part="$3.partial" skipped=0 info path target
    git --git-dir="$git_dir" cat-file -e "$rev^{commit}" 2>/dev/null \
        || { echo "$git_dir does not hold commit $rev" >&2; return 1; }
    rm -rf "$part"
    mkdir -p "$part"
    if ! git --git-dir="$git_dir" archive "$rev" 2>/dev/null | tar -x -C "$part" 2>/dev/null; then
        echo "  git archive stopped (a blob is missing from this clone): writing file by file"
        rm -rf "$part"
        mkdir -p "$part"
        # `git archive` stops at the first blob a partial clone lacks; go one blob at a time instead
        while IFS=$'\t' read -r info path; do
            set -- $info
            [ "$2" = blob ] || continue
            mkdir -p "$part/$(dirname "$path")"
            if ! git --git-dir="$git_dir" cat-file blob "$3" > "$part/$path" 2>/dev/null; then
                rm -f "$part/$path"
                echo "  skipped (not in this clone): $path"
                skipped=$((skipped + 1))
                continue
            fi
            case $1 in
                100755) chmod +x "$part/$path" ;;
                120000) target=$(cat "$part/$path"); rm "$part/$path"; ln -s "$target" "$part/$path" ;;
            esac
        done < <(git --git-dir="$git_dir" ls-tree -r "$rev")
        echo "  $skipped file(s) skipped"
    fi
    mv "$part" "$dest"
}

# pinned VAR: the commit Forge's launch_utils.py would clone (the environment variable, as Forge reads it, first)
pinned() {
    local value=${!1:-}
    [ -n "$value" ] || value=$(sed -n "s/.*os\.environ\.get('$1', \"\([0-9a-f]*\)\").*/\1/p" \
        "$forge_dir/modules/launch_utils.py")
    [ -n "$value" ] || { echo "no $1 in $forge_dir/modules/launch_utils.py" >&2; return 1; }
    echo "$value"
}

# pip install, quiet, without the warnings about this machine's absent local index folders; pip's status is kept
pip_install() {
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v '^WARNING: Location' >&2)
}

# step NAME KEY: true when NAME last succeeded with the same inputs (KEY); otherwise the caller runs it and calls done_
step() { [ "$(cat "$venv/.rgd-setup/$1" 2>/dev/null)" = "$2" ]; }
done_() { mkdir -p "$venv/.rgd-setup"; printf '%s\n' "$2" > "$venv/.rgd-setup/$1"; }

# --- source trees ---
if [ -e "$forge_dir/launch.py" ]; then
    say "Forge tree: keeping $forge_dir"
else
    git_dir=${FORGE_GIT:?"$forge_dir has no Forge; set FORGE_GIT to a git directory holding commit $commit"}
    say "writing Forge $commit from $git_dir into $forge_dir"
    # an empty folder is fine; anything else is someone's: stop
    [ ! -e "$forge_dir" ] || rmdir "$forge_dir" || { echo "$forge_dir is not empty and has no launch.py" >&2; exit 1; }
    write_tree "$git_dir" "$commit" "$forge_dir"
fi

mkdir -p "$forge_dir/repositories"
for spec in stable-diffusion-webui-assets:ASSETS_GIT:ASSETS_COMMIT_HASH \
            huggingface_guess:HUGGINGFACE_GUESS_GIT:HUGGINGFACE_GUESS_HASH \
            BLIP:BLIP_GIT:BLIP_COMMIT_HASH; do
    IFS=: read -r name git_var hash_var <<< "$spec"
    dest=$forge_dir/repositories/$name
    if [ -e "$dest" ]; then
        say "repositories/$name: keeping it"
        continue
    fi
    rev=$(pinned "$hash_var")
    git_dir=${!git_var:-}
    [ -n "$git_dir" ] || { echo "$dest is missing; set $git_var to a git directory holding commit $rev" >&2; exit 1; }
    say "writing $name $rev from $git_dir"
    write_tree "$git_dir" "$rev" "$dest"
done

# --- virtual environment ---
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv with $python"
    "$python" -m venv "$venv"
fi

have_torch=$("$venv/bin/python" -c 'import importlib.metadata as m
def v(n):
    try: return m.version(n).split("+")[0]
    except m.PackageNotFoundError: return "-"
print("torch==" + v("torch"), "torchvision==" + v("torchvision"))')
if [ "$have_torch" = "${torch_pins[*]}" ]; then
    say "torch: ${torch_pins[*]} already there"
else
    say "installing ${torch_pins[*]} (had: $have_torch)"
    pip_install "${torch_pins[@]}"
fi

# torch >= 2.13 needs setuptools >= 77.0.3 where Forge pins 69.5.1; setuptools 81 dropped pkg_resources, which
# pytorch_lightning 1.9.4 imports at start-up. joblib is missing from Forge's list, and its builtin soft-inpainting
# script fails to load without it.
grep -v '^setuptools' "$forge_dir/requirements_versions.txt" > "$work/forge_requirements.txt"
printf '%s\n' "${torch_pins[@]}" 'setuptools>=77.0.3,<81' > "$work/forge_constraints.txt"
key=$(cat "$work/forge_requirements.txt" "$work/forge_constraints.txt" | sha256sum | cut -c1-16)
if step forge-requirements "$key"; then
    say "Forge requirements: already installed"
else
    say "installing Forge's requirements_versions.txt"
    pip_install -r "$work/forge_requirements.txt" -c "$work/forge_constraints.txt" joblib
    done_ forge-requirements "$key"
fi

# rgd's runtime dependencies, with every distribution already in the venv pinned to its installed version, so
# pip can add packages (nudenet, onnxruntime, scikit-learn, ...) but never change one Forge installed. New
# packages take constraints/lowest.txt's versions where it has them: that set is tested in CI with Forge's
# numpy/transformers/diffusers pins, and it keeps pip from trying opencv releases that need numpy 2.
"$venv/bin/python" - "$repo_root/pyproject.toml" "$repo_root/constraints/lowest.txt" \
    "$work/rgd_requirements.txt" "$work/rgd_constraints.txt" <<'PY'
import importlib.metadata as metadata, os, re, sys, tomllib
pyproject, lowest, requirements_out, constraints_out = sys.argv[1:]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
installed = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
pins = {name: f"{name}=={version}" for name, version in installed.items() if name not in ("pip", "setuptools")}
if os.path.exists(lowest):
    for line in open(lowest, encoding="utf-8"):
        name, _, version = line.split("#")[0].strip().partition("==")
        if version and norm(name) not in installed:
            pins[norm(name)] = f"{norm(name)}=={version}"
with open(requirements_out, "w") as out:
    out.write("\n".join(tomllib.load(open(pyproject, "rb"))["project"]["dependencies"]) + "\n")
with open(constraints_out, "w") as out:
    out.write("\n".join(sorted(pins.values())) + "\nsetuptools>=77.0.3,<81\n")
PY
# keyed by its inputs, not by the constraints, which list what this step itself adds
key=$({ cat "$work/rgd_requirements.txt" "$repo_root/constraints/lowest.txt" "$venv/.rgd-setup/forge-requirements" \
    2>/dev/null || true; } | sha256sum | cut -c1-16)
if step rgd-requirements "$key"; then
    say "rgd's dependencies: already installed"
else
    say "installing rgd's dependencies: $(tr '\n' ' ' < "$work/rgd_requirements.txt")"
    "$venv/bin/python" -m pip freeze --all > "$work/before.txt"
    pip_install -r "$work/rgd_requirements.txt" -c "$work/rgd_constraints.txt"
    "$venv/bin/python" -m pip freeze --all > "$work/after.txt"
    added=$(comm -13 <(sort "$work/before.txt") <(sort "$work/after.txt") | tr '\n' ' ')
    echo "  added: ${added:-nothing}"
    done_ rgd-requirements "$key"
fi

# --- checks: Forge's pins intact, a consistent venv, rgd_core importable from the repo folder ---
"$venv/bin/python" - "$forge_dir/requirements_versions.txt" <<'PY'
import importlib.metadata as metadata, sys
from packaging.version import Version  # "0.15" pins what installs as "0.15.0"
wrong = []
for line in open(sys.argv[1], encoding="utf-8"):
    name, _, version = line.split("#")[0].strip().partition("==")
    if version and name != "setuptools":
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "missing"
        if have == "missing" or Version(have) != Version(version):
            wrong.append(f"{name} {have} (Forge pins {version})")
if wrong:
    sys.exit("setup_forge.sh: Forge's pins changed: " + ", ".join(wrong))
print("  Forge's pins intact:", ", ".join(f"{n} {metadata.version(n)}" for n in
      ("torch", "torchvision", "numpy", "gradio", "transformers", "diffusers", "safetensors", "huggingface-hub")))
PY
"$venv/bin/python" -m pip check || echo "  WARNING: pip check is not clean (above)"
(cd "$forge_dir" && PYTHONPATH="$repo_root" "$venv/bin/python" -c "import rgd_core; print('  import rgd_core: ok')")

mkdir -p "$forge_dir/extensions"
if [ ! -e "$forge_dir/extensions/rgd" ]; then
    ln -s "$repo_root" "$forge_dir/extensions/rgd"
fi

say "Forge ready in $forge_dir, venv $venv"
cat <<EOF
launch (CPU, loopback, offline; add --data-dir DIR to keep models, extensions, settings and outputs under DIR):
  cd $forge_dir && HF_HUB_OFFLINE=1 $venv/bin/python launch.py --skip-prepare-environment --skip-install \\
    --always-cpu --api --server-name 127.0.0.1 --port 7860 --no-download-sd-model --skip-version-check
checkpoints go in $forge_dir/models/Stable-diffusion/ (or DIR/models/Stable-diffusion/); ready when
GET http://127.0.0.1:7860/sdapi/v1/sd-models answers 200.
EOF
