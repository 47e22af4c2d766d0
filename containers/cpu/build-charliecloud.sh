#!/usr/bin/env bash
# Build a Charliecloud CPU image of a generated project, without any image registry:
#   1. a Debian bookworm root filesystem from apt (mmdebstrap, with the host's apt sources or --mirror),
#   2. a wheelhouse made on the host from the project's requirements.lock and requirements-lab.lock (JupyterLab,
#      for the notebook pod; binary wheels for CPython 3.11 / manylinux; the few sdist-only packages built into
#      wheels on the host), plus the Horovod wheel from
#      containers/horovod/build-horovod.sh when the project's backend is horovod,
#   3. /opt/venv inside the image, installed offline from that wheelhouse with ch-run (no network inside),
#   4. the project package itself, a mount point for the project directory, and the build inputs recorded in
#      /etc/smkml-image.json (both locks' sha256, base, Horovod wheel, template version, date),
#   5. what a Kubernetes pod's command needs without a package index: snakemake-executor-plugin-kubernetes starts
#      every pod with `pip install --target .snakemake/pip-deployments snakemake-storage-plugin-s3`, so the image
#      carries that plugin's wheels, as locked, in /opt/smkml/pod-wheels, and /opt/venv/pip.conf points
#      `pip install` there (no index); plus /workdir, the mount point of the plugin's work volume.
# Layers are cached: the base (Debian + venv + locks) under <cache>/images/base-<key> keyed by the locks, the
# Horovod wheel and this recipe; the project image under <cache>/images/<slug>-<key> (hard-linked copy of the base
# plus the project). A second build with the same inputs reuses them. The project gets a link
# containers/images/cpu -> the image, the default `container.image` for runtime charliecloud.
#
# Usage: build-charliecloud.sh [--project DIR] [--backend BACKEND] [--python PYTHON] [--cache DIR]
#                              [--mirror URL|SOURCES_FILE] [--link PATH] [--rebuild]
#   --project  the generated project (default: the project this script is vendored into)
#   --backend  a train.backend of the project's schema (default: the one in config/config.yaml)
#   --python   host CPython 3.11 with pip (and torch, for a Horovod build) (default: python3 on PATH)
#   --cache    default: $SMKML_CACHE or ~/.cache/cookiecutter-snakemake-ml
#   --mirror   Debian mirror or apt sources file (default: the host's apt sources, else deb.debian.org)
#   --link     where to link the image (default: <project>/containers/images/cpu)
#   --rebuild  ignore cached images (the wheelhouse and Horovod wheel caches are kept)
# Prints the image directory on the last line. Run it: ch-run --set-env -b $PWD -c $PWD <image> -- python ...
# Needs: ch-run (Debian: charliecloud-runtime), mmdebstrap, tar, and root or unprivileged user namespaces.
set -euo pipefail

RECIPE_VERSION=2 # bump when the image layout changes: invalidates cached images
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,libopenmpi3,libgomp1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# What the image installs besides the lock (setuptools for torch): one list for every image.
EXTRA_REQUIREMENTS=$(sed 's/#.*//' "$here/../extra-requirements.txt" | xargs)
project=""
backend=""
python=python3
cache="${SMKML_CACHE:-$HOME/.cache/cookiecutter-snakemake-ml}"
mirror=""
link=""
rebuild=0

die() { echo "build-charliecloud: error: $*" >&2; exit 2; }
say() { echo "build-charliecloud: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --project) project="${2:-}"; shift 2 ;;
    --backend) backend="${2:-}"; shift 2 ;;
    --python) python="${2:-}"; shift 2 ;;
    --cache) cache="${2:-}"; shift 2 ;;
    --mirror) mirror="${2:-}"; shift 2 ;;
    --link) link="${2:-}"; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (allowed: --project DIR, --backend BACKEND, --python PYTHON, --cache DIR, --mirror URL|FILE, --link PATH, --rebuild)" ;;
  esac
done

command -v "$python" >/dev/null 2>&1 || die "python interpreter '$python' not found"
export USER="${USER:-$(id -un)}" # ch-run refuses to start without it

[ -n "$project" ] || project=$(cd "$here/../.." && pwd)
project=$(cd "$project" 2>/dev/null && pwd) || die "project directory '$project' does not exist"
lock="$project/requirements.lock"
lab_lock="$project/requirements-lab.lock"
[ -f "$lock" ] && [ -f "$lab_lock" ] && [ -f "$project/pyproject.toml" ] \
  || die "'$project' is not a generated project (no requirements.lock, requirements-lab.lock and pyproject.toml): pass --project DIR"
if [ -z "$backend" ]; then
  backend=$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["train"]["backend"])' \
    "$project/config/config.yaml") || die "cannot read train.backend from $project/config/config.yaml: pass --backend"
fi
# The backends are the schema's (workflow/schemas/config.schema.yaml), the one list of them.
backends=$("$python" -c 'import sys, yaml
schema = yaml.safe_load(open(sys.argv[1]))
print(" ".join(schema["properties"]["train"]["properties"]["backend"]["enum"]))' \
  "$project/workflow/schemas/config.schema.yaml") || die "cannot read the backends from $project/workflow/schemas"
case " $backends " in *" $backend "*) ;; *) die "--backend '$backend' is not one of: ${backends// /, }" ;; esac
# The arguments are good: now the tools.
for tool in ch-run mmdebstrap tar sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required (Debian: apt-get install charliecloud-runtime mmdebstrap)"
done
py_tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
[ "$py_tag" = cp311 ] || die "host python '$python' is $py_tag; the image's Python (Debian $SUITE) is cp311: pass --python"

if [ -z "$mirror" ]; then
  for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$sources" ] && grep -q "$SUITE" "$sources"; then mirror="$sources"; break; fi
  done
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

images="$cache/images"
mkdir -p "$images"
exec 9>"$images/.lock"
flock 9 # one build at a time per cache

sha() { sha256sum "$@" | cut -d' ' -f1; }
lock_sha=$(sha "$lock")
lab_lock_sha=$(sha "$lab_lock")
# Run in an image with a clean environment: ch-run passes the host's through (PIP_*, PYTHONPATH, ...).
chrun() { env -i USER="$USER" HOME=/root LANG=C.UTF-8 PATH=/opt/venv/bin:/usr/bin:/bin ch-run "$@"; }

# -------------------------------------------------------------- Horovod wheel (same script as every image)
horovod_wheel=""
if [ "$backend" = horovod ]; then
  hvd_log=$(bash "$here/../horovod/build-horovod.sh" --gpu cpu --python "$python" --wheel-only 2>&1) \
    || { echo "$hvd_log" >&2; die "building the Horovod wheel failed"; }
  horovod_wheel=$(echo "$hvd_log" | sed -n 's/^build-horovod: \(using \)\{0,1\}cached //p' | tail -n 1)
  [ -f "$horovod_wheel" ] || { echo "$hvd_log" >&2; die "build-horovod.sh named no wheel"; }
fi
hvd_sha=$([ -n "$horovod_wheel" ] && sha "$horovod_wheel" || echo none)
mirror_id=$([ -f "$mirror" ] && sha "$mirror" || echo "$mirror")
base_key=$(printf '%s\n' "recipe=$RECIPE_VERSION" "suite=$SUITE" "packages=$PACKAGES" "mirror=$mirror_id" \
  "lock=$lock_sha" "lab_lock=$lab_lock_sha" "extra=$EXTRA_REQUIREMENTS" "horovod=$hvd_sha" | sha256sum | cut -c1-16)
base="$images/base-$base_key"

# -------------------------------------------------------------- wheelhouse (host side, cached by lock)
wheelhouse() {
  local dir="$cache/wheelhouse/cp311-${lock_sha:0:16}-${lab_lock_sha:0:16}"
  if [ -f "$dir/.complete" ] && [ -f "$dir/extra.txt" ] && [ "$(cat "$dir/extra.txt")" = "$EXTRA_REQUIREMENTS" ]; then
    echo "$dir"; return
  fi
  mkdir -p "$dir"
  local want="$dir/requirements.txt" sdists=() log name
  # Both locks (the lab lock pins its shared packages at the main lock's versions): each package once.
  cat "$lock" "$lab_lock" | grep -Ev '^\s*(#|$)' | sort -u > "$want"
  # Binary wheels for the image's platform; packages with no wheel at all are built on the host (same CPython
  # 3.11, pure Python in practice) and the download is retried without them.
  for _ in $(seq 30); do
    if log=$("$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 \
        --platform any -d "$dir" -r "$want" 2>&1); then
      break
    fi
    name=$(echo "$log" | sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' | head -n 1)
    [ -n "$name" ] || { echo "$log" >&2; die "pip download of the wheelhouse failed"; }
    say "no wheel for $name: building it on the host"
    sdists+=("$name")
    grep -vxF "$name" "$want" > "$want.tmp" && mv "$want.tmp" "$want"
  done
  if [ -n "${sdists[*]:-}" ]; then
    "$python" -m pip wheel --quiet --no-deps -w "$dir" "${sdists[@]}" >&2 || die "building wheels for ${sdists[*]} failed"
  fi
  # shellcheck disable=SC2086
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform any \
    -d "$dir" $EXTRA_REQUIREMENTS >&2 || die "pip download of $EXTRA_REQUIREMENTS failed"
  echo "$EXTRA_REQUIREMENTS" > "$dir/extra.txt"
  cp "$lock" "$dir/requirements.lock"
  cp "$lab_lock" "$dir/requirements-lab.lock"
  touch "$dir/.complete"
  echo "$dir"
}

# -------------------------------------------------------------- base image: Debian + /opt/venv + the lock
if [ "$rebuild" = 1 ] || [ ! -f "$base/etc/smkml-base.json" ]; then
  rm -rf "$base"
  wheels=$(wheelhouse)
  tmp="$images/.tmp-base-$base_key-$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  say "Debian $SUITE root filesystem from $mirror (mmdebstrap)"
  mmdebstrap --quiet --variant=apt --include="$PACKAGES" "$SUITE" - "$mirror" | tar -x -C "$tmp" 2>/dev/null \
    || die "mmdebstrap of $SUITE from $mirror failed"
  # mmdebstrap writes no /etc/hosts and ch-run supplies none: without it `localhost` does not resolve inside and
  # rendezvous at localhost (torchrun --standalone, Gloo) cannot start.
  printf '%s\n' "127.0.0.1 localhost" "::1 localhost ip6-localhost ip6-loopback" > "$tmp/etc/hosts"
  mkdir -p "$tmp/wheels" "$tmp/ch"
  say "installing requirements.lock and requirements-lab.lock offline into /opt/venv"
  chrun -w "$tmp" -- python3 -m venv /opt/venv
  chrun -w -b "$wheels:/wheels" "$tmp" -- /opt/venv/bin/pip install --quiet --no-index --no-deps \
    --find-links /wheels -r /wheels/requirements.lock -r /wheels/requirements-lab.lock -r /wheels/extra.txt
  if [ -n "$horovod_wheel" ]; then
    chrun -w -b "$(dirname "$horovod_wheel"):/wheels" "$tmp" -- /opt/venv/bin/pip install --quiet --no-index \
      --no-deps "/wheels/$(basename "$horovod_wheel")"
    chrun "$tmp" -- python -c 'import horovod.torch as hvd; assert hvd.mpi_built() or hvd.gloo_built()'
  fi
  chrun "$tmp" -- /opt/venv/bin/pip check >&2
  rmdir "$tmp/wheels"
  mkdir -p "$tmp/opt/smkml"
  cp "$lock" "$tmp/opt/smkml/requirements.lock"
  cp "$lab_lock" "$tmp/opt/smkml/requirements-lab.lock"
  printf '%s\n' "PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin" "VIRTUAL_ENV=/opt/venv" "LANG=C.UTF-8" \
    > "$tmp/ch/environment"
  "$python" - "$tmp/etc/smkml-base.json" <<PY
import json, sys, datetime
json.dump({"base": "debian:$SUITE (mmdebstrap --variant=apt)", "apt_packages": "$PACKAGES".split(","),
           "apt_sources": "$mirror_id", "requirements_lock_sha256": "$lock_sha",
           "requirements_lab_lock_sha256": "$lab_lock_sha",
           "extra_requirements": "$EXTRA_REQUIREMENTS".split(),
           "horovod_wheel": "$(basename "${horovod_wheel:-none}")", "horovod_wheel_sha256": "$hvd_sha",
           "recipe": "containers/cpu/build-charliecloud.sh v$RECIPE_VERSION",
           "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
          open(sys.argv[1], "w"), indent=2)
PY
  mv "$tmp" "$base"
  trap - EXIT
  say "cached base image $base"
else
  say "using cached base image $base"
fi

# -------------------------------------------------------------- project image: base + the project package
slug=$(basename "$project")
template_version=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
  "$project/vendored.json" 2>/dev/null || true)
source_sha=$(cd "$project" && find pyproject.toml src -type f ! -path '*__pycache__*' ! -path '*.egg-info*' \
  ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
PROJECT_LAYER_VERSION=3 # bump when the project layer's layout changes (2: pod wheels, pip.conf, /workdir; 3: 1777)
key=$(printf '%s\n' "base=$base_key" "source=$source_sha" "project=$project" "layer=$PROJECT_LAYER_VERSION" \
  | sha256sum | cut -c1-16)
image="$images/$slug-$key"
if [ "$rebuild" = 1 ] || [ ! -f "$image/etc/smkml-image.json" ]; then
  rm -rf "$image"
  tmp="$images/.tmp-$slug-$key-$$"
  trap 'rm -rf "$tmp" "$tmp.whl"' EXIT
  cp -al "$base" "$tmp" # hard links: the project layer costs only what it adds
  mkdir -p "$tmp.whl/src"
  # Built from a copy, so the project gets no build/ or *.egg-info droppings.
  (cd "$project" && tar -c --exclude=__pycache__ --exclude='*.egg-info' pyproject.toml src) | tar -x -C "$tmp.whl/src"
  "$python" -m pip wheel --quiet --no-deps -w "$tmp.whl" "$tmp.whl/src" >&2 || die "building the project's wheel failed"
  wheel=$(ls "$tmp.whl"/*.whl | head -n 1)
  chrun -w -b "$tmp.whl:/mnt" "$tmp" -- /opt/venv/bin/pip install --quiet --no-index --no-deps "/mnt/$(basename "$wheel")"
  mkdir -p "$tmp$project" # mount point: ch-run -b binds the project at the same path (read-only images cannot)
  # Kubernetes pods: the storage plugin's wheels and their dependencies as locked (resolved from the wheelhouse
  # alone), the venv's pip installing from them only, and the work volume's mount point.
  wheels=$(wheelhouse)
  "$python" -m pip download --quiet --no-index --find-links "$wheels" --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any \
    -d "$tmp/opt/smkml/pod-wheels" snakemake-storage-plugin-s3 >&2 \
    || die "the wheelhouse $wheels lacks snakemake-storage-plugin-s3 or its dependencies (is it in requirements.lock?)"
  printf '%s\n' "# Pods have no package index: pip install takes the wheels the image carries (containers/cpu/build-charliecloud.sh)." \
    "[install]" "no-index = true" "find-links = /opt/smkml/pod-wheels" > "$tmp/opt/venv/pip.conf"
  mkdir -p "$tmp/workdir"
  chmod 1777 "$tmp/workdir" # an OCI image of it (containers/build.sh oci) runs as a non-root user
  rm -f "$tmp/etc/smkml-image.json"
  "$python" - "$tmp/etc/smkml-base.json" "$tmp/etc/smkml-image.json" <<PY
import json, sys, datetime
meta = json.load(open(sys.argv[1]))
meta.update({"project": "$slug", "project_dir": "$project", "project_wheel": "$(basename "$wheel")",
             "project_source_sha256": "$source_sha", "template_version": "${template_version:-unknown}",
             "backend": "$backend", "image_built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
json.dump(meta, open(sys.argv[2], "w"), indent=2)
PY
  rm -rf "$tmp.whl"
  mv "$tmp" "$image"
  trap - EXIT
  say "built image $image"
else
  say "using cached image $image"
fi

# Drop older images of this project and images of projects that no longer exist (test runs leave many behind).
for old in "$images/$slug"-*; do
  [ -f "$old/etc/smkml-image.json" ] && [ "$old" != "$image" ] || continue
  dir=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["project_dir"])' "$old/etc/smkml-image.json")
  if [ "$dir" = "$project" ] || [ ! -d "$dir" ]; then rm -rf "$old"; fi
done

link="${link:-$project/containers/images/cpu}"
mkdir -p "$(dirname "$link")"
ln -sfn "$image" "$link"
say "linked $link -> $image"
echo "$image"
