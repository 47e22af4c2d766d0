#!/usr/bin/env bash
# Build the project's training image, one command per variant. Run from anywhere inside the project.
#
# Usage: containers/build.sh VARIANT [options for the builder]
#   cpu            Charliecloud directory image, no registry and no root needed (containers/cpu/build-charliecloud.sh)
#                  -> containers/images/cpu (a link into ~/.cache/cookiecutter-snakemake-ml/images)
#   cpu-apptainer  apptainer build containers/images/cpu.sif containers/cpu/horovod-cpu.def
#   cuda           apptainer build containers/images/cuda.sif containers/cuda/horovod-cuda.def
#   lumi           singularity (or apptainer) build containers/images/lumi.sif containers/lumi/horovod-rocm.def, on LUMI:
#                  it starts from LUMI AI Factory's lumi-multitorch image under /appl/local/laifs/containers/
#                  (`module load systools` first: LUMI builds unprivileged with proot)
#   lumi-cotainr   cotainr build containers/images/lumi-cotainr.sif --system=lumi-g (conda env from the lock;
#                  torch_ddp only: cotainr cannot compile Horovod)
#   oci [NAME] [options for cpu]
#                  the cpu image imported into podman as an OCI image for Kubernetes pods (default NAME:
#                  localhost/<project>:latest; then podman push it): the image's environment (the venv on PATH),
#                  HOME=/tmp, WORKDIR /workdir and a non-root default user (the serving manifests' user), since
#                  snakemake-executor-plugin-kubernetes sets no security context on the pipeline's pods
# Extra options go to the builder (e.g. --fakeroot for apptainer build, --accept-licenses for cotainr).
# Then set config/config.yaml container: runtime and image (see docs/containers.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
VARIANTS="cpu, cpu-apptainer, cuda, lumi, lumi-cotainr, oci"
die() { echo "containers/build.sh: error: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "which variant? (allowed: $VARIANTS)"
variant="$1"; shift
mkdir -p "$project/containers/images"

apptainer_build() { # image definition [builder options]
  local builder base
  # A definition that starts from a local image (LUMI's lumi-multitorch) builds only where that image is.
  if grep -q -E '^Bootstrap:[[:space:]]*localimage' "$project/$2"; then
    base=$(sed -n -E 's/^From:[[:space:]]*//p' "$project/$2" | head -1)
    [ -f "$base" ] || die "variant '$variant' starts from the local image $base (From: in $2), which is not on this machine: build on LUMI, or point From: at an existing lumi-multitorch image (ls /appl/local/laifs/containers/)"
  fi
  builder=$(command -v apptainer || command -v singularity) \
    || die "variant '$variant' needs apptainer or singularity, and neither is on PATH (on LUMI: singularity is there; elsewhere install Apptainer, or use the 'cpu' variant with Charliecloud)"
  local image="$1" def="$2"; shift 2
  cd "$project" # %files paths are relative to the project root
  echo "+ $(basename "$builder") build $* $image $def" >&2
  "$(basename "$builder")" build "$@" "$image" "$def"
  echo "$project/$image"
}

case "$variant" in
  cpu) exec bash "$here/cpu/build-charliecloud.sh" --project "$project" "$@" ;;
  cpu-apptainer) apptainer_build containers/images/cpu.sif containers/cpu/horovod-cpu.def "$@" ;;
  cuda) apptainer_build containers/images/cuda.sif containers/cuda/horovod-cuda.def "$@" ;;
  lumi) apptainer_build containers/images/lumi.sif containers/lumi/horovod-rocm.def "$@" ;;
  lumi-cotainr)
    command -v cotainr >/dev/null 2>&1 \
      || die "variant 'lumi-cotainr' needs cotainr (on LUMI: module load LUMI CrayEnv cotainr; elsewhere: pip install cotainr)"
    env_file="$project/containers/images/cotainr-env.yml"
    python3 "$here/lumi/cotainr_env.py" --project "$project" --output "$env_file"
    cd "$project"
    echo "+ cotainr build containers/images/lumi-cotainr.sif --system=lumi-g --conda-env=$env_file $*" >&2
    cotainr build containers/images/lumi-cotainr.sif --system=lumi-g --conda-env="$env_file" "$@"
    echo "$project/containers/images/lumi-cotainr.sif"
    ;;
  oci)
    name="localhost/$(basename "$project"):latest"
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then name="$1"; shift; fi
    command -v podman >/dev/null 2>&1 || die "variant 'oci' needs podman (Debian: apt-get install podman)"
    # The serving manifests' non-root user (workflow/lib/smkml/deploy.py), so pods and serving run as the same user.
    user=$(sed -n -E 's/^USER_ID = ([0-9]+).*/\1/p' "$project/workflow/lib/smkml/deploy.py")
    [ -n "$user" ] || die "no USER_ID in $project/workflow/lib/smkml/deploy.py"
    image=$(bash "$here/cpu/build-charliecloud.sh" --project "$project" "$@" | tail -n 1)
    changes=()
    while IFS= read -r line; do # Charliecloud keeps the image's environment in /ch/environment; OCI in its config
      [ -n "$line" ] && changes+=(--change "ENV $line")
    done < "$image/ch/environment"
    changes+=(--change "ENV HOME=/tmp" --change "USER $user:$user" --change "WORKDIR /workdir")
    echo "+ tar -C $image -cf - . | podman import ${changes[*]} - $name" >&2
    tar -C "$image" -cf - . | podman import "${changes[@]}" - "$name" >&2
    echo "$name"
    ;;
  *) die "unknown variant '$variant' (allowed: $VARIANTS)" ;;
esac
