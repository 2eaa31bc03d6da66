#!/usr/bin/env bash
# Build the real control plane for the real-cluster tests into an envtest-style
# KUBEBUILDER_ASSETS folder: kube-apiserver, etcd and kubectl, at the versions
# pinned in go.mod/go.sum. A binary that is already there is not built again.
# Usage: tools/kube/build.sh [OUT_DIR]   (default: build/kube-assets)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../build/kube-assets}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! command -v go >/dev/null 2>&1; then
    echo "make cluster-assets needs Go 1.26+ (https://go.dev/doc/install); it builds kube-apiserver, etcd and kubectl from their Go modules." >&2
    exit 1
fi

# Binaries this script built for other pins are built again; binaries without its stamp (envtest's
# own, say) are left alone.
pins="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$out/.pins" ] && [ "$(cat "$out/.pins")" != "$pins" ]; then
    echo "pins changed since the last build: rebuilding"
    rm -f "$out/etcd" "$out/kube-apiserver" "$out/kubectl"
fi

kube_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$kube_version -X $version_pkg.gitTreeState=clean"
ldflags="$ldflags -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$(echo "$kube_version" | cut -d. -f2)"

build() {  # build NAME PACKAGE [LDFLAGS]
    local name="$1" pkg="$2" flags="${3:-}"
    if [ -x "$out/$name" ]; then
        echo "$name: present in $out"
        return
    fi
    echo "$name: building $pkg"
    (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$out/$name.tmp" "$pkg")
    mv "$out/$name.tmp" "$out/$name"
}

build etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$ldflags"
echo "$pins" > "$out/.pins"
echo "KUBEBUILDER_ASSETS=$out"
