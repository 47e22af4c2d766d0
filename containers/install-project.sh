#!/usr/bin/env bash
# Install a generated project into a container image being built (the %post step of every Apptainer definition in
# containers/): the pinned environment from requirements.lock, the project package, Horovod built by the same
# containers/horovod/build-horovod.sh as everywhere else, and the build inputs as metadata and labels.
#
# Usage (inside the build): install-project.sh --gpu cpu|rocm|cuda --base IMAGE [--torch-index URL] [--python PYTHON]
#   --gpu          Horovod's GPU collectives: cpu (Gloo/MPI only), rocm (RCCL), cuda (NCCL)
#   --base         the base image the definition starts from (recorded, not pulled)
#   --torch-index  an extra package index with the torch build for this GPU (e.g. PyTorch's ROCm index)
#   --python       the interpreter the venv is made from (default: python3)
# Expects what the definitions' %files copy to /opt/smkml: requirements.lock, extra-requirements.txt,
# project/ (pyproject.toml, src/), build-horovod.sh, vendored.json. Writes /opt/venv, /etc/smkml-image.json and
# labels (APPTAINER_LABELS).
set -euo pipefail

gpu=""
base=""
torch_index=""
python=python3
die() { echo "install-project: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu="${2:-}"; shift 2 ;;
    --base) base="${2:-}"; shift 2 ;;
    --torch-index) torch_index="${2:-}"; shift 2 ;;
    --python) python="${2:-}"; shift 2 ;;
    *) die "unknown argument '$1' (allowed: --gpu cpu|rocm|cuda, --base IMAGE, --torch-index URL, --python PYTHON)" ;;
  esac
done
case "$gpu" in cpu|rocm|cuda) ;; *) die "--gpu '$gpu' is not one of: cpu, rocm, cuda" ;; esac
[ -n "$base" ] || die "--base IMAGE is required (it is recorded in the image's metadata)"
src="${SMKML_SRC:-/opt/smkml}" # overridable for tests
for need in requirements.lock extra-requirements.txt project/pyproject.toml project/src build-horovod.sh; do
  [ -e "$src/$need" ] || die "$src/$need is missing: the definition's %files must copy it"
done
# What the image installs besides the lock (setuptools for torch), from containers/extra-requirements.txt.
EXTRA_REQUIREMENTS=$(sed 's/#.*//' "$src/extra-requirements.txt" | xargs)

"$python" -m venv /opt/venv
pip=(/opt/venv/bin/python -m pip install --no-cache-dir)
[ -z "$torch_index" ] || pip+=(--extra-index-url "$torch_index")
"${pip[@]}" -r "$src/requirements.lock" $EXTRA_REQUIREMENTS
"${pip[@]}" --no-deps "$src/project"
bash "$src/build-horovod.sh" --gpu "$gpu" --python /opt/venv/bin/python --cache "$src/wheels"
/opt/venv/bin/python -m pip check

lock_sha=$(sha256sum "$src/requirements.lock" | cut -d' ' -f1)
template_version=$(/opt/venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
  "$src/vendored.json" 2>/dev/null || true)
/opt/venv/bin/python - "$base" "$gpu" "$lock_sha" "${template_version:-unknown}" "$EXTRA_REQUIREMENTS" <<'PY'
import datetime, importlib.metadata as md, json, sys
base, gpu, lock_sha, template_version, extra = sys.argv[1:]
meta = {
    "base": base, "gpu": gpu, "requirements_lock_sha256": lock_sha, "extra_requirements": extra.split(),
    "template_version": template_version, "torch": md.version("torch"), "horovod": md.version("horovod"),
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
    echo "org.smkml.base-image $base"
    echo "org.smkml.template-version ${template_version:-unknown}"
    echo "org.smkml.gpu $gpu"
  } >> "$labels"
fi
