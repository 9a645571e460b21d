#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from the k8s.io/kubernetes
# module pinned in go.mod, into $1 (default build/kube). The -X flags stamp the release into
# the binaries as Kubernetes' own build does (hack/lib/version.sh); without them /version says
# v0.0.0 and kubectl cannot tell the server's version. Go's build cache makes a rebuild quick.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../../build/kube}")
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")
IFS=. read -r major minor _ <<<"${version#v}"
flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$out"
cd "$here"
GOFLAGS=-mod=mod go build -ldflags "-s -w$flags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
echo "$version" > "$out/VERSION"
