#!/usr/bin/env bash
# Build the Kubernetes test control plane from the Go module proxy, once, into a cache outside
# the checkout: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (and Kueue
# with --with-kueue, for bench/kueue_compare.py), plus KServe's InferenceService CRD from KServe's
# Go module (the tests validate the platform's manifests against it). Binaries are reused while
# the versions below are unchanged; a fresh machine needs ~15-20 min on 2 cores and ~7 GB of Go caches (deletable).
#
# Usage: scripts/k8s-build.sh [--with-kueue] [--print-bindir] [--print-kserve-crd]
# Environment: MLP_K8S_CACHE (default ~/.cache/jupyterhub-mlp/k8s), GO (default: go on PATH).
set -euo pipefail

ETCD_VERSION=v3.6.16
K8S_VERSION=v1.36.3
KWOK_VERSION=v0.8.0
KUEUE_VERSION=v0.17.0
KSERVE_VERSION=v0.20.0

with_kueue=0
print_bindir=0
print_crd=0
for arg in "$@"; do
  case "$arg" in
    --with-kueue) with_kueue=1 ;;
    --print-bindir) print_bindir=1 ;;
    --print-kserve-crd) print_crd=1 ;;
    *) echo "k8s-build: unknown argument $arg (use --with-kueue, --print-bindir," \
            "--print-kserve-crd)" >&2; exit 2 ;;
  esac
done

CACHE="${MLP_K8S_CACHE:-${HOME:-/root}/.cache/jupyterhub-mlp/k8s}"
BIN="$CACHE/bin/etcd-$ETCD_VERSION.k8s-$K8S_VERSION.kwok-$KWOK_VERSION"
KUEUE_BIN="$CACHE/bin/kueue-$KUEUE_VERSION"
KSERVE_CRD="$CACHE/crds/kserve-$KSERVE_VERSION/serving.kserve.io_inferenceservices.yaml"
if [ "$print_bindir" = 1 ]; then
  echo "$BIN"
  exit 0
fi
if [ "$print_crd" = 1 ]; then
  echo "$KSERVE_CRD"
  exit 0
fi

GO="${GO:-go}"
if ! command -v "$GO" >/dev/null; then
  echo "k8s-build: the Go toolchain (>= 1.25) is needed to build the test control plane;" \
       "install it (https://go.dev/dl/) or set GO=/path/to/go" >&2
  exit 1
fi
export GOTOOLCHAIN=local
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOPATH="$CACHE/go/path"
export GOFLAGS="-buildvcs=false -modcacherw"
mkdir -p "$BIN" "$KUEUE_BIN" "$GOMODCACHE" "$GOCACHE" "$CACHE/src"

# One build at a time per cache (several checkouts may share it).
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  echo "k8s-build: another build holds $CACHE/.lock; waiting for it" >&2
  flock 9
fi

t_all=$(date +%s)
step() { echo "k8s-build: $*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  local t0 src="$CACHE/src/etcd-$ETCD_VERSION"
  t0=$(date +%s)
  step "building etcd $ETCD_VERSION (~2 min on 2 cores)"
  # go install refuses etcd's server module (its go.mod has replace directives): build it
  # from a small module that requires it.
  mkdir -p "$src"
  cat > "$src/go.mod" <<EOT
module mlp/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOT
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$src/tools.go"
  (cd "$src" && "$GO" mod tidy && "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  step "etcd built in $(elapsed "$t0")"
}

build_kube() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kube-scheduler" ]; then
    return 0
  fi
  local t0 src="$CACHE/src/kubernetes-$K8S_VERSION" staging_version="v0.${K8S_VERSION#v1.}" mod
  t0=$(date +%s)
  step "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (~7 min on 2 cores)"
  # k8s.io/kubernetes replaces every k8s.io/* staging module by ./staging/... at v0.0.0, so
  # go install refuses it; a module that requires it and maps each staging module to its
  # published v0.<minor>.<patch> builds it.
  mkdir -p "$src"
  mod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  if [ ! -f "$mod" ]; then
    echo "k8s-build: could not download k8s.io/kubernetes@$K8S_VERSION from the module proxy" >&2
    exit 1
  fi
  {
    echo "module mlp/kubebuild"
    echo
    grep -m1 '^go ' "$mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/src/.*#\1#p' "$mod" | while read -r m; do
      printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
    done
    echo ")"
  } > "$src/go.mod"
  cat > "$src/tools.go" <<'EOT'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOT
  local minor ld p
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$src" && "$GO" mod tidy && mkdir -p out && "$GO" build -trimpath -ldflags="$ld" -o out/ \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
  mv "$src"/out/kube-* "$BIN/"
  step "kubernetes binaries built in $(elapsed "$t0")"
}

go_install() { # name module version destdir
  local name=$1 module=$2 version=$3 dest=$4 t0
  [ -x "$dest/$name" ] && return 0
  t0=$(date +%s)
  step "building $name $version (~3-5 min on 2 cores)"
  GOBIN="$dest" "$GO" install -trimpath -ldflags="-s -w" "$module@$version"
  step "$name built in $(elapsed "$t0")"
}

build_etcd
build_kube
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "$BIN"
# kwok's own stage definitions (simulated node and pod lifecycles) ship in its module; the test
# fixture loads them from here and shortens their delays.
if [ ! -d "$BIN/kwok-stages" ]; then
  dir=$("$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  mkdir -p "$BIN/kwok-stages.tmp"
  for s in node/fast node/heartbeat-with-lease pod/general; do
    cp "$dir/kustomize/stage/$s"/*.yaml "$BIN/kwok-stages.tmp/"
  done
  rm -f "$BIN/kwok-stages.tmp/kustomization.yaml"
  mv "$BIN/kwok-stages.tmp" "$BIN/kwok-stages"
fi
# KServe's InferenceService CRD, from its released Go module (no build: only the YAML is used).
if [ ! -f "$KSERVE_CRD" ]; then
  step "fetching KServe $KSERVE_VERSION's InferenceService CRD from the Go module proxy"
  dir=$("$GO" mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  mkdir -p "$(dirname "$KSERVE_CRD")"
  cp "$dir/config/crd/full/serving.kserve.io_inferenceservices.yaml" "$KSERVE_CRD.tmp"
  mv "$KSERVE_CRD.tmp" "$KSERVE_CRD"
fi
if [ "$with_kueue" = 1 ]; then
  go_install kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION" "$KUEUE_BIN"
  # Kueue's CRDs come from its module (they are part of the released module).
  if [ ! -d "$KUEUE_BIN/crds" ]; then
    dir=$("$GO" mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
    mkdir -p "$KUEUE_BIN/crds.tmp"
    cp "$dir"/config/components/crd/bases/*.yaml "$KUEUE_BIN/crds.tmp/"
    mv "$KUEUE_BIN/crds.tmp" "$KUEUE_BIN/crds"
  fi
fi
step "binaries ready in $BIN ($(elapsed "$t_all") this run)"
