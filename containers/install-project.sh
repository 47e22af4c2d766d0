#!/usr/bin/env bash
# Install a generated project into a container image being built (the %post step of every Apptainer definition in
# containers/): the pinned environment from requirements.lock, JupyterLab from requirements-lab.lock on top (the
# notebook pod runs it from the image), the project package, Horovod built by the same
# containers/horovod/build-horovod.sh as everywhere else, and the build inputs as metadata and labels.
#
# Usage (inside the build): install-project.sh --gpu cpu|rocm|cuda --base IMAGE [--torch-index URL] [--python PYTHON]
#                                             [--system-torch]
#   --gpu          Horovod's GPU collectives: cpu (Gloo/MPI only), rocm (RCCL), cuda (NCCL)
#   --base         the base image the definition starts from (recorded, not pulled)
#   --torch-index  an extra package index with the torch build for this GPU (e.g. PyTorch's ROCm index)
#   --python       the interpreter the venv is made from (default: python3)
#   --system-torch use the torch that PYTHON already has (a base image built for the site, e.g. LUMI's
#                  lumi-multitorch with its RCCL network plugin): the venv sees it (--system-site-packages), the
#                  lock's torch pins (torch, torchvision, torchaudio, triton) are left out, and the torch version
#                  used is recorded
# Expects what the definitions' %files copy to /opt/smkml: requirements.lock, requirements-lab.lock,
# extra-requirements.txt,
# project/ (pyproject.toml, src/), build-horovod.sh, vendored.json. Writes /opt/venv, /etc/smkml-image.json and
# labels (APPTAINER_LABELS).
set -euo pipefail

gpu=""
base=""
torch_index=""
python=python3
system_torch=0
die() { echo "install-project: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu="${2:-}"; shift 2 ;;
    --base) base="${2:-}"; shift 2 ;;
    --torch-index) torch_index="${2:-}"; shift 2 ;;
    --python) python="${2:-}"; shift 2 ;;
    --system-torch) system_torch=1; shift ;;
    *) die "unknown argument '$1' (allowed: --gpu cpu|rocm|cuda, --base IMAGE, --torch-index URL, --python PYTHON, --system-torch)" ;;
  esac
done
case "$gpu" in cpu|rocm|cuda) ;; *) die "--gpu '$gpu' is not one of: cpu, rocm, cuda" ;; esac
[ -n "$base" ] || die "--base IMAGE is required (it is recorded in the image's metadata)"
src="${SMKML_SRC:-/opt/smkml}" # overridable for tests
for need in requirements.lock requirements-lab.lock extra-requirements.txt project/pyproject.toml project/src build-horovod.sh; do
  [ -e "$src/$need" ] || die "$src/$need is missing: the definition's %files must copy it"
done
# What the image installs besides the lock (setuptools for torch), from containers/extra-requirements.txt.
EXTRA_REQUIREMENTS=$(sed 's/#.*//' "$src/extra-requirements.txt" | xargs)

lock="$src/requirements.lock"
if [ "$system_torch" = 1 ]; then
  [ -z "$torch_index" ] || die "--system-torch uses the base image's torch: --torch-index makes no sense with it"
  base_torch=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
    || die "--system-torch: '$python' has no torch; the base image's Python with its torch must be on PATH"
  echo "install-project: using the base image's torch $base_torch (the lock's torch pins are left out)" >&2
  "$python" -m venv --system-site-packages /opt/venv
  lock=$(mktemp)
  grep -v -i -E '^(torch|torchvision|torchaudio|triton|pytorch-triton-rocm)==' "$src/requirements.lock" > "$lock"
else
  "$python" -m venv /opt/venv
fi
pip=(/opt/venv/bin/python -m pip install --no-cache-dir)
[ -z "$torch_index" ] || pip+=(--extra-index-url "$torch_index")
"${pip[@]}" -r "$lock" $EXTRA_REQUIREMENTS
"${pip[@]}" -r "$src/requirements-lab.lock" # its shared packages have the main lock's versions: nothing changes
"${pip[@]}" --no-deps "$src/project"
bash "$src/build-horovod.sh" --gpu "$gpu" --python /opt/venv/bin/python --cache "$src/wheels"
# Kubernetes pods: snakemake-executor-plugin-kubernetes starts every pod with `pip install --target ...
# snakemake-storage-plugin-s3`. The image carries that plugin's wheels at the lock's versions, and the venv's pip
# installs from them only (pods need no package index), as the Charliecloud image does (cpu/build-charliecloud.sh).
/opt/venv/bin/python -m pip download --no-cache-dir --only-binary=:all: -c "$lock" -d /opt/smkml/pod-wheels \
  snakemake-storage-plugin-s3
printf '%s\n' "# Pods have no package index: pip install takes the wheels the image carries (containers/install-project.sh)." \
  "[install]" "no-index = true" "find-links = /opt/smkml/pod-wheels" > /opt/venv/pip.conf
mkdir -p /workdir && chmod 1777 /workdir # the plugin's work volume; images may run as a non-root user
if [ "$system_torch" = 1 ]; then
  # The base image's own packages share the environment; their requirements are theirs to keep.
  /opt/venv/bin/python -c 'import sys, torch; sys.exit(0 if not torch.__file__.startswith("/opt/venv/") else "torch was installed into /opt/venv over the torch of the base image")'
  /opt/venv/bin/python -m pip check || echo "install-project: warning: pip check reports conflicts (above) with the base image's packages" >&2
else
  /opt/venv/bin/python -m pip check
fi

lock_sha=$(sha256sum "$src/requirements.lock" | cut -d' ' -f1)
lab_lock_sha=$(sha256sum "$src/requirements-lab.lock" | cut -d' ' -f1)
template_version=$(/opt/venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
  "$src/vendored.json" 2>/dev/null || true)
/opt/venv/bin/python - "$base" "$gpu" "$lock_sha" "$lab_lock_sha" "${template_version:-unknown}" "$EXTRA_REQUIREMENTS" "$system_torch" <<'PY'
import datetime, importlib.metadata as md, json, sys
base, gpu, lock_sha, lab_lock_sha, template_version, extra, system_torch = sys.argv[1:]
meta = {
    "base": base, "gpu": gpu, "requirements_lock_sha256": lock_sha,
    "requirements_lab_lock_sha256": lab_lock_sha, "extra_requirements": extra.split(),
    "template_version": template_version, "torch": md.version("torch"), "horovod": md.version("horovod"),
    "torch_from": "the base image" if system_torch == "1" else "requirements.lock",
    "python": sys.version.split()[0], "recipe": "containers/install-project.sh",
    "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
json.dump(meta, open("/etc/smkml-image.json", "w"), indent=2)
print(json.dumps(meta, indent=2))
PY
# Labels known only now (Apptainer: $APPTAINER_LABELS, SingularityCE: $SINGULARITY_LABELS; `inspect` shows them).
labels="${APPTAINER_LABELS:-${SINGULARITY_LABELS:-}}"
if [ -n "$labels" ]; then
  {
    echo "org.smkml.requirements-lock-sha256 $lock_sha"
    echo "org.smkml.requirements-lab-lock-sha256 $lab_lock_sha"
    echo "org.smkml.base-image $base"
    echo "org.smkml.template-version ${template_version:-unknown}"
    echo "org.smkml.gpu $gpu"
  } >> "$labels"
fi
