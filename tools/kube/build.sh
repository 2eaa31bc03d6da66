#!/usr/bin/env bash
# Build the real control plane for the real-cluster tests into an envtest-style
# KUBEBUILDER_ASSETS folder: kube-apiserver, etcd and kubectl, at the versions
# pinned in go.mod/go.sum. A binary that is already there is not built again.
# A first build compiles them from source: 5 to 15 minutes on 2 cores (more on a
# busy machine), most of it kube-apiserver; Go's build cache makes a second one
# take seconds.
# Usage: tools/kube/build.sh [OUT_DIR]   (default: build/kube-assets)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../build/kube-assets}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! command -v go >/dev/null 2>&1; then
    echo "make cluster-assets needs Go 1.26+ (https://go.dev/doc/install); it builds kube-apiserver, etcd and kubectl from their Go modules." >&2
    echo "Or build nothing: point KUBEBUILDER_ASSETS at envtest's binaries (setup-envtest use -p path; see docs/testing.md)." >&2
    exit 1
fi

# Binaries this script built for other pins are built again; binaries without its stamp (envtest's
# own, say) are left alone. The pins are the modules and this script's commands: not its comments
# or messages, so rewording one does not cost a rebuild.
pins="$( { cat "$here/go.mod" "$here/go.sum"; grep -Ev '^[[:space:]]*(#|echo )' "$here/build.sh"; } | sha256sum | cut -d' ' -f1)"
if [ -f "$out/.pins" ] && [ "$(cat "$out/.pins")" != "$pins" ]; then
    echo "pins changed since the last build: rebuilding"
    rm -f "$out/etcd" "$out/kube-apiserver" "$out/kubectl"
fi

kube_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(cd "$here" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$kube_version -X $version_pkg.gitTreeState=clean"
ldflags="$ldflags -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$(echo "$kube_version" | cut -d. -f2)"

missing=()
for name in etcd kube-apiserver kubectl; do
    [ -x "$out/$name" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "Building ${missing[*]} into $out (etcd $etcd_version, kube-apiserver and kubectl $kube_version)."
    echo "A first build compiles them from source: 5 to 15 minutes on 2 cores, more on a busy machine,"
    echo "most of it kube-apiserver; with Go's build cache, later builds take seconds. To build nothing,"
    echo "point KUBEBUILDER_ASSETS at envtest's binaries instead (setup-envtest use -p path; docs/testing.md)."
fi

build() {  # build NAME PACKAGE [LDFLAGS]
    local name="$1" pkg="$2" flags="${3:-}"
    if [ -x "$out/$name" ]; then
        echo "$name: present in $out"
        return
    fi
    echo "$name: building $pkg, started $(date +%H:%M:%S)"
    local started=$SECONDS next=60 builder
    (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$out/$name.tmp" "$pkg") &
    builder=$!
    trap "kill $builder 2>/dev/null" EXIT  # an interrupted script stops its build too
    while kill -0 "$builder" 2>/dev/null; do
        sleep 1
        if [ $((SECONDS - started)) -ge "$next" ] && kill -0 "$builder" 2>/dev/null; then
            echo "$name: still building, $((next / 60)) min so far"
            next=$((next + 60))
        fi
    done
    trap - EXIT
    if ! wait "$builder"; then
        echo "$name: go build failed after $((SECONDS - started)) s" >&2
        exit 1
    fi
    mv "$out/$name.tmp" "$out/$name"
    echo "$name: built in $((SECONDS - started)) s"
}

build etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$ldflags"
echo "$pins" > "$out/.pins"
echo "KUBEBUILDER_ASSETS=$out"
