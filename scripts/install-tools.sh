#!/usr/bin/env bash
# Install and build the real tools obsgen checks and runs its rendered stack with:
#   Debian package    redis-server
#   collector builder otelcol, from collector/builder-config.yaml at the pinned collector version
#   go install        prometheus + promtool, amtool, alertmanager
#   go get -tool      jaeger, pint, docker-compose (Compose v5), each in a throwaway module
#                     (their go.mod has replace directives, which `go install` refuses)
#   go build          k8s-check, this repository's checker of Prometheus Operator objects (tools/k8s-check)
#   go build          kube-apiserver + etcd (tools/kube-apiserver), for a server-side dry run of a
#                     kubernetes bundle; go install controller-gen, which generates the Operator's
#                     CRDs into $OBSGEN_TOOLS/share/ from its API module
#   go install        centrifugo, the peer server bench/ compares with (no part of a rendered stack)
#   go install        node_exporter; go get -tool: blackbox_exporter (the exporters the local target runs)
# Versions come from stack/data/versions.yaml (`native:`), stamped into the binaries with -ldflags -X.
#
# Everything lives outside the checkout, so every clone, CI run and second checkout reuses it:
#   $OBSGEN_TOOLS (default ${XDG_CACHE_HOME:-~/.cache}/obsgen/tools): bin/, state/, src/
#   Go's own module and build caches at Go's defaults (go env GOMODCACHE GOCACHE)
# Idempotent: a tool whose binary reports the right version and whose cache key (version + recipe
# + Go version) is unchanged is not rebuilt; a build that failed is not retried for the same key
# unless --retry-failed is given. Never downloads a prebuilt binary: the Go module proxy is used
# only through `go install`, `go get` and the collector builder. Exits 1 if a tool is missing.
#
# Usage: scripts/install-tools.sh [--retry-failed]
set -euo pipefail

SCRIPT_START=$(date +%s%3N)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${OBSGEN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/obsgen/tools}
BIN=$TOOLS/bin
STATE=$TOOLS/state   # cache keys (*.key), cached failures (*.failed), build logs (*.log)
SRC=$TOOLS/src       # throwaway Go modules for `go get -tool` builds
GO_BIN_DIR=$TOOLS/go/bin
MANIFEST=$REPO/collector/builder-config.yaml
VERSIONS=$REPO/stack/data/versions.yaml
RETRY_FAILED=0

for arg in "$@"; do
  case $arg in
    --retry-failed) RETRY_FAILED=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-tools: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# The installed Go builds everything (never a toolchain fetched behind our back); no VCS stamping
# (module builds have none) and -trimpath, so compiled objects do not depend on where a build
# runs and Go's build cache serves every checkout. GOCACHE and GOMODCACHE stay Go's defaults.
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false
mkdir -p "$BIN" "$STATE" "$SRC" "$GO_BIN_DIR"

die() { echo "install-tools: error: $*" >&2; exit 1; }
note() { echo "install-tools: $*" >&2; }
now_ms() { date +%s%3N; }
secs_since() { local start=$1; awk -v ms="$(( $(now_ms) - start ))" 'BEGIN { printf "%.1fs", ms / 1000 }'; }

# Rows of the final table: tool|version|source|path|time
ROWS=()
add_row() { ROWS+=("$1|$2|$3|$4|$5"); }
# Lines printed under the table: what could not be built, and why.
NOTES=()
add_note() { NOTES+=("$1"); }
MISSING=()

# ---------------------------------------------------------------------------------------------
# Versions (one place: stack/data/versions.yaml) and the collector manifest's agreement with them.
# ---------------------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is needed to read $VERSIONS"
python3 -c 'import yaml' 2>/dev/null \
  || die "python3 cannot import yaml: pip install . (or apt-get install python3-yaml) first"

# VERSION[tool] = what the binary must report; MODULE_VERSION[tool] = the Go module version built.
declare -A VERSION MODULE_VERSION
while read -r tool version module_version; do
  VERSION[$tool]=$version
  MODULE_VERSION[$tool]=$module_version
done < <(python3 - "$VERSIONS" <<'PY'
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    data = yaml.safe_load(f)
problems = []
for tool, entry in (data.get("native") or {}).items():
    if ("pin" in entry) == ("version" in entry):
        problems.append(f"native.{tool}: give exactly one of pin or version")
        continue
    version = str(data[entry["pin"]]["version"] if "pin" in entry else entry["version"])
    module_version = str(entry.get("module_version") or f"v{version}")
    if tool in ("prometheus", "promtool"):
        # Prometheus 3.x is published as Go module versions v0.3MM.P (3.16.0 -> v0.316.0).
        major, minor, patch = (int(x) for x in version.split("."))
        expected = f"v0.{major * 100 + minor}.{patch}"
        if module_version != expected:
            problems.append(f"native.{tool}: Prometheus {version} is module version {expected}, not {module_version}")
    print(tool, version, module_version)
if problems:
    sys.exit(f"{sys.argv[1]}:\n  " + "\n  ".join(problems))
PY
)
for tool in otelcol prometheus promtool jaeger amtool alertmanager pint docker-compose k8s-check centrifugo \
            kube-apiserver etcd controller-gen node_exporter blackbox_exporter; do
  [[ -n ${VERSION[$tool]:-} ]] || die "$VERSIONS has no native.$tool"
done
COLLECTOR_VERSION=${VERSION[otelcol]}

# Checks the manifest against the pin and prints the stable (v1.x) core version it pairs with.
COLLECTOR_STABLE_VERSION=$(python3 - "$MANIFEST" "$COLLECTOR_VERSION" <<'PY'
import sys, yaml
path, pinned = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    manifest = yaml.safe_load(f)
problems = []
if str(manifest["dist"].get("version")) != pinned:
    problems.append(f"dist.version is {manifest['dist'].get('version')!r}, versions.yaml pins {pinned!r}")
if manifest["dist"].get("name") != "otelcol":
    problems.append("dist.name must be 'otelcol' (the binary name obsgen looks for)")
modules = [m["gomod"] for kind in ("receivers", "processors", "exporters", "extensions",
                                   "connectors", "providers", "converters")
           for m in manifest.get(kind) or []]
modules.append(manifest["telemetry"]["gomod"])
stable = set()
for gomod in modules:
    module, _, version = gomod.partition(" ")
    if version.startswith("v0."):
        if version != f"v{pinned}":
            problems.append(f"{module} is at {version}, versions.yaml pins v{pinned}")
    elif version.startswith("v1."):
        stable.add(version)
    else:
        problems.append(f"{module} has no usable version ({gomod!r})")
if len(stable) > 1:
    problems.append(f"stable core modules disagree: {sorted(stable)}")
if problems:
    sys.exit(f"{path}:\n  " + "\n  ".join(problems))
print(stable.pop() if stable else "")
PY
) || die "collector manifest does not agree with $VERSIONS"

# ---------------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------------
# Only what no Go build provides. Debian's prometheus (2.42), prometheus-alertmanager (0.25) and
# docker-compose (1.29) are no longer installed: the Go builds below replace them.
DEB_PACKAGES=(redis-server)
deb_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

install_debian_packages() {
  local missing=() pkg
  for pkg in "${DEB_PACKAGES[@]}"; do deb_installed "$pkg" || missing+=("$pkg"); done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing packages ${missing[*]}: run as root or install sudo"
    sudo=(sudo)
  fi
  note "installing Debian packages: ${missing[*]}"
  # Keep apt from starting redis-server as a system service: tests and `obsgen up` start their
  # own on free ports. policy-rc.d exit 101 = "action forbidden".
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from obsgen scripts/install-tools.sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    created_policy=1
  fi
  local status=0
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
  if ((status == 0)); then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" || status=$?
  fi
  if ((created_policy)); then "${sudo[@]}" rm -f "$policy"; fi
  ((status == 0)) || die "apt-get failed (exit $status) installing ${missing[*]}"
}

t0=$(now_ms)
install_debian_packages
DEB_TIME=$(secs_since "$t0")

# ---------------------------------------------------------------------------------------------
# Cached builds
# ---------------------------------------------------------------------------------------------
command -v go >/dev/null || die "Go is needed to build the tools (install Go >= 1.25)"
GO_VERSION=$(go env GOVERSION)

# reports_version BINARY VERSION ARGS...: the binary's version output names VERSION.
reports_version() {
  local binary=$1 version=$2; shift 2
  [[ -x $binary ]] || return 1
  "$binary" "$@" 2>&1 | head -n 5 | grep -qE "(^|[^0-9.])v?${version//./\\.}([^0-9.]|$)"
}
# How each binary is asked for its version.
declare -A VERSION_ARGS=(
  [otelcol]=--version [prometheus]=--version [promtool]=--version [amtool]=--version
  [alertmanager]=--version [jaeger]=version [pint]=version [docker-compose]="version --short"
  [k8s-check]=--version [kube-apiserver]=--version [etcd]=--version [controller-gen]=--version
  [centrifugo]=version
  [node_exporter]=--version [blackbox_exporter]=--version
)
binary_ok() {  # NAME: $BIN/NAME reports VERSION[NAME]
  # shellcheck disable=SC2086  # VERSION_ARGS holds words
  reports_version "$BIN/$1" "${VERSION[$1]}" ${VERSION_ARGS[$1]}
}

# failed_before STEP KEY: this exact build failed before (and --retry-failed was not given).
failed_before() {
  ((RETRY_FAILED == 0)) && [[ -f $STATE/$1.failed && $(head -n1 "$STATE/$1.failed") == "$2" ]]
}
failure_reason() { tail -n +2 "$STATE/$1.failed" | grep -v '^\s*$' | tail -n 4 | tr '\n\t' '  ' | sed 's/  */ /g'; }

# cached_step STEP KEY BUILD BINARY...: run BUILD (a function; its output goes to
# $STATE/STEP.log) unless every BINARY is there, reports its pinned version and was built with KEY.
# A failure is recorded under KEY in $STATE/STEP.failed and the step's binaries are removed, so
# no binary of another version stays on PATH.
cached_step() {
  local step=$1 key=$2 build=$3; shift 3
  local binaries=("$@") t0 all_ok=1 name
  t0=$(now_ms)
  if [[ -f $STATE/$step.key && $(<"$STATE/$step.key") == "$key" ]]; then
    for name in "${binaries[@]}"; do binary_ok "$name" || all_ok=0; done
    if ((all_ok)); then
      for name in "${binaries[@]}"; do add_row "$name" "${VERSION[$name]}" "$SOURCE (cached)" "$BIN/$name" "$(secs_since "$t0")"; done
      return 0
    fi
  fi
  if failed_before "$step" "$key"; then
    for name in "${binaries[@]}"; do
      rm -f "$BIN/$name"
      add_row "$name" "-" "not built" "-" "-"
      MISSING+=("$name")
    done
    rm -f "$STATE/$step.key"
    add_note "$step ${VERSION[${binaries[0]}]}: failed before for the same key (--retry-failed retries): $(failure_reason "$step")"
    return 0
  fi
  note "building $step ${VERSION[${binaries[0]}]}: $SOURCE"
  all_ok=0
  if "$build" >"$STATE/$step.log" 2>&1; then
    all_ok=1
    for name in "${binaries[@]}"; do binary_ok "$name" || { all_ok=0; echo "$BIN/$name does not report version ${VERSION[$name]}" >>"$STATE/$step.log"; }; done
  fi
  if ((all_ok)); then
    echo "$key" >"$STATE/$step.key"
    rm -f "$STATE/$step.failed"
    for name in "${binaries[@]}"; do add_row "$name" "${VERSION[$name]}" "$SOURCE" "$BIN/$name" "$(secs_since "$t0")"; done
    return 0
  fi
  { echo "$key"; grep -v '^go: downloading' "$STATE/$step.log" | tail -n 8; } >"$STATE/$step.failed"
  rm -f "$STATE/$step.key"
  for name in "${binaries[@]}"; do
    rm -f "$BIN/$name"
    add_row "$name" "-" "not built" "-" "$(secs_since "$t0")"
    MISSING+=("$name")
  done
  add_note "$step ${VERSION[${binaries[0]}]}: build failed after $(secs_since "$t0") (log: $STATE/$step.log): $(failure_reason "$step")"
}

# install_from STAGE NAME=BUILT...: move built binaries from STAGE into $BIN under their names.
install_from() {
  local stage=$1 pair; shift
  for pair in "$@"; do
    install -m 0755 "$stage/${pair#*=}" "$BIN/${pair%%=*}.new" || return 1
    mv -f "$BIN/${pair%%=*}.new" "$BIN/${pair%%=*}" || return 1
  done
}

# prometheus/common/version variables, as Prometheus' own release builds (promu) set them.
prom_ldflags() {  # VERSION MODULE_VERSION
  echo "-s -w -X github.com/prometheus/common/version.Version=$1" \
       "-X github.com/prometheus/common/version.Revision=$2" \
       "-X github.com/prometheus/common/version.Branch=v$1" \
       "-X github.com/prometheus/common/version.BuildUser=obsgen-install-tools"
}

# Recipes: what each step runs. They are part of the cache key, so changing one rebuilds.
# go install TARGET... with LDFLAGS into a stage directory (go install names binaries itself).
go_install_recipe() {  # LDFLAGS NAME=BUILT... -- TARGET...
  local ldflags=$1; shift
  local pairs=() stage status=0
  while [[ $1 != -- ]]; do pairs+=("$1"); shift; done; shift
  stage=$(mktemp -d "$TOOLS/stage.XXXXXX")
  GOBIN=$stage go install -trimpath -ldflags "$ldflags" "$@" || status=$?
  if ((status == 0)); then install_from "$stage" "${pairs[@]}" || status=$?; fi
  rm -rf "$stage"
  return "$status"
}
# A throwaway module under $SRC that depends on TARGET as a tool (`go get -tool`), built with
# `go build -o DIR/ tool`: for modules `go install` refuses (replace directives in their go.mod).
tool_module_recipe() {  # DIR LDFLAGS NAME=BUILT TARGET
  local dir=$1 ldflags=$2 pair=$3 target=$4 stage status=0
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  (cd "$dir" && go mod init tools && go get -tool "$target") || return 1
  stage=$(mktemp -d "$TOOLS/stage.XXXXXX")
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$stage/" tool) || status=$?
  if ((status == 0)); then install_from "$stage" "$pair" || status=$?; fi
  rm -rf "$stage"
  return "$status"
}

# ---------------------------------------------------------------------------------------------
# 2. The OpenTelemetry Collector, built by its official builder from our manifest
# ---------------------------------------------------------------------------------------------
build_collector_builder() {
  local builder=$GO_BIN_DIR/builder t0
  t0=$(now_ms)
  if "$builder" version 2>&1 | grep -qF "v$COLLECTOR_VERSION"; then  # it prints on stderr
    add_row builder "$COLLECTOR_VERSION" "go install (cached)" "$builder" "$(secs_since "$t0")"
    return 0
  fi
  note "building the collector builder v$COLLECTOR_VERSION (go install)"
  GOBIN=$GO_BIN_DIR go install -trimpath "go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION" \
    >"$STATE/builder.log" 2>&1 || { cat "$STATE/builder.log" >&2; die "go install of the collector builder failed"; }
  add_row builder "$COLLECTOR_VERSION" "go install" "$builder" "$(secs_since "$t0")"
}
otelcol_build() {
  local work=$TOOLS/build
  mkdir -p "$work"
  rm -rf "$work/otelcol-build"
  # output_path in the manifest is relative: run the builder from $work.
  (cd "$work" && "$GO_BIN_DIR/builder" --config "$MANIFEST" --skip-strict-versioning=false) || return 1
  install_from "$work/otelcol-build" otelcol=otelcol
}

build_collector_builder
SOURCE="collector builder"
cached_step otelcol "otelcol $COLLECTOR_VERSION manifest:$(sha256sum "$MANIFEST" | cut -c1-16) $GO_VERSION" \
  otelcol_build otelcol

# ---------------------------------------------------------------------------------------------
# 3. go install: Prometheus + promtool, amtool, Alertmanager
# ---------------------------------------------------------------------------------------------
P_MOD=github.com/prometheus/prometheus
P_VERSION=${VERSION[prometheus]} P_MODVER=${MODULE_VERSION[prometheus]}
[[ ${VERSION[promtool]} == "$P_VERSION" && ${MODULE_VERSION[promtool]} == "$P_MODVER" ]] \
  || die "$VERSIONS: native.promtool must equal native.prometheus (one module builds both)"
prometheus_build() {
  go_install_recipe "$(prom_ldflags "$P_VERSION" "$P_MODVER")" prometheus=prometheus promtool=promtool -- \
    "$P_MOD/cmd/prometheus@$P_MODVER" "$P_MOD/cmd/promtool@$P_MODVER"
}
SOURCE="go install $P_MOD/cmd/{prometheus,promtool}@$P_MODVER"
cached_step prometheus "$SOURCE | $(prom_ldflags "$P_VERSION" "$P_MODVER") | $GO_VERSION" prometheus_build prometheus promtool

AM_MOD=github.com/prometheus/alertmanager
amtool_build() {
  go_install_recipe "$(prom_ldflags "${VERSION[amtool]}" "${MODULE_VERSION[amtool]}")" amtool=amtool -- \
    "$AM_MOD/cmd/amtool@${MODULE_VERSION[amtool]}"
}
SOURCE="go install $AM_MOD/cmd/amtool@${MODULE_VERSION[amtool]}"
cached_step amtool "$SOURCE | $(prom_ldflags "${VERSION[amtool]}" "${MODULE_VERSION[amtool]}") | $GO_VERSION" \
  amtool_build amtool

# 0.32+ embed a UI build (ui/app/dist) the Go module does not ship, so versions.yaml keeps the
# process at the newest version that builds; amtool checks configs at the pinned version.
alertmanager_build() {
  go_install_recipe "$(prom_ldflags "${VERSION[alertmanager]}" "${MODULE_VERSION[alertmanager]}")" \
    alertmanager=alertmanager -- "$AM_MOD/cmd/alertmanager@${MODULE_VERSION[alertmanager]}"
}
SOURCE="go install $AM_MOD/cmd/alertmanager@${MODULE_VERSION[alertmanager]}"
cached_step alertmanager \
  "$SOURCE | $(prom_ldflags "${VERSION[alertmanager]}" "${MODULE_VERSION[alertmanager]}") | $GO_VERSION" \
  alertmanager_build alertmanager

# ---------------------------------------------------------------------------------------------
# 4. go get -tool in a throwaway module: Jaeger v2, pint, Docker Compose v5
# ---------------------------------------------------------------------------------------------
J_TARGET=github.com/jaegertracing/jaeger/cmd/jaeger@${MODULE_VERSION[jaeger]}
J_LDFLAGS="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=v${VERSION[jaeger]}"
jaeger_build() { tool_module_recipe "$SRC/jaeger-${VERSION[jaeger]}" "$J_LDFLAGS" jaeger=jaeger "$J_TARGET"; }
SOURCE="go get -tool $J_TARGET"
cached_step jaeger "$SOURCE | $J_LDFLAGS | $GO_VERSION" jaeger_build jaeger

PINT_TARGET=github.com/cloudflare/pint/cmd/pint@${MODULE_VERSION[pint]}
PINT_LDFLAGS="-s -w -X main.version=${VERSION[pint]}"
pint_build() { tool_module_recipe "$SRC/pint-${VERSION[pint]}" "$PINT_LDFLAGS" pint=pint "$PINT_TARGET"; }
SOURCE="go get -tool $PINT_TARGET"
cached_step pint "$SOURCE | $PINT_LDFLAGS | $GO_VERSION" pint_build pint

# The Compose CLI plugin's main package is .../cmd, so `go build` names it `cmd`: installed under
# the name of the standalone binary, docker-compose (`docker-compose config` needs no engine).
C_TARGET=github.com/docker/compose/v5/cmd@${MODULE_VERSION[docker-compose]}
C_LDFLAGS="-s -w -X github.com/docker/compose/v5/internal.Version=v${VERSION[docker-compose]}"
compose_build() { tool_module_recipe "$SRC/compose-${VERSION[docker-compose]}" "$C_LDFLAGS" docker-compose=cmd "$C_TARGET"; }
SOURCE="go get -tool $C_TARGET"
cached_step docker-compose "$SOURCE | $C_LDFLAGS | $GO_VERSION" compose_build docker-compose

# ---------------------------------------------------------------------------------------------
# 5. This repository's Go checker: tools/k8s-check (Prometheus Operator API types, strict decoding)
# ---------------------------------------------------------------------------------------------
# Built from its own go.mod and go.sum (the module proxy through Go, as above); the cache key is
# the Operator API version plus a hash of the checker's source, so an edit rebuilds it.
KC_DIR=$REPO/tools/k8s-check
KC_MOD=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
grep -qE "^\s*$KC_MOD v${VERSION[k8s-check]//./\\.}\s*$" "$KC_DIR/go.mod" \
  || die "$KC_DIR/go.mod does not require $KC_MOD v${VERSION[k8s-check]} (versions.yaml native.k8s-check)"
KC_LDFLAGS="-s -w -X main.version=${VERSION[k8s-check]}"
k8s_check_build() {
  local stage status=0
  stage=$(mktemp -d "$TOOLS/stage.XXXXXX")
  (cd "$KC_DIR" && go build -mod=readonly -trimpath -ldflags "$KC_LDFLAGS" -o "$stage/k8s-check" .) || status=$?
  if ((status == 0)); then install_from "$stage" k8s-check=k8s-check || status=$?; fi
  rm -rf "$stage"
  return "$status"
}
SOURCE="go build tools/k8s-check ($KC_MOD v${VERSION[k8s-check]})"
KC_HASH=$(cd "$KC_DIR" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
cached_step k8s-check "$SOURCE | source:$KC_HASH | $KC_LDFLAGS | $GO_VERSION" k8s_check_build k8s-check

# ---------------------------------------------------------------------------------------------
# 5b. The server-side dry run: kube-apiserver and etcd (tools/kube-apiserver), and the Prometheus
#     Operator CRDs generated by controller-gen from the Operator API module k8s-check uses
# ---------------------------------------------------------------------------------------------
# kube-apiserver is k8s.io/kubernetes's cmd/kube-apiserver, a `tool` of tools/kube-apiserver/go.mod
# (which replaces the staging modules by their releases); etcd is the etcd server module that
# release requires, behind a three-line main. Version stamped as Kubernetes' release builds do.
KA_DIR=$REPO/tools/kube-apiserver
grep -qE "^\s*k8s\.io/kubernetes v${VERSION[kube-apiserver]//./\\.}( // indirect)?\s*$" "$KA_DIR/go.mod" \
  || die "$KA_DIR/go.mod does not require k8s.io/kubernetes v${VERSION[kube-apiserver]} (versions.yaml native.kube-apiserver)"
grep -qE "^\s*(require )?go\.etcd\.io/etcd/server/v3 v${VERSION[etcd]//./\\.}\s*$" "$KA_DIR/go.mod" \
  || die "$KA_DIR/go.mod does not require go.etcd.io/etcd/server/v3 v${VERSION[etcd]} (versions.yaml native.etcd)"
KA_MAJOR=${VERSION[kube-apiserver]%%.*}
KA_MINOR=${VERSION[kube-apiserver]#*.}; KA_MINOR=${KA_MINOR%%.*}
KA_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=v${VERSION[kube-apiserver]}"
KA_LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=$KA_MAJOR -X k8s.io/component-base/version.gitMinor=$KA_MINOR"
KA_LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
kube_apiserver_build() {
  local stage status=0
  stage=$(mktemp -d "$TOOLS/stage.XXXXXX")
  (cd "$KA_DIR" && go build -mod=readonly -trimpath -ldflags "$KA_LDFLAGS" -o "$stage/" tool \
     && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$stage/etcd" ./etcd) || status=$?
  if ((status == 0)); then install_from "$stage" kube-apiserver=kube-apiserver etcd=etcd || status=$?; fi
  rm -rf "$stage"
  return "$status"
}
SOURCE="go build tools/kube-apiserver (k8s.io/kubernetes v${VERSION[kube-apiserver]})"
KA_HASH=$(cd "$KA_DIR" && cat go.mod go.sum etcd/*.go | sha256sum | cut -c1-16)
cached_step kube-apiserver "$SOURCE | source:$KA_HASH | $KA_LDFLAGS | $GO_VERSION" kube_apiserver_build kube-apiserver etcd

CG_MOD=sigs.k8s.io/controller-tools/cmd/controller-gen@v${VERSION[controller-gen]}
controller_gen_build() { go_install_recipe "-s -w" controller-gen=controller-gen -- "$CG_MOD"; }
SOURCE="go install $CG_MOD"
cached_step controller-gen "$SOURCE | $GO_VERSION" controller_gen_build controller-gen

# The CRDs as the Operator's `make generate-crds` makes them (crd:crdVersions=v1 over ./v1 and
# ./v1alpha1 of its API module), into $TOOLS/share/prometheus-operator-crds/v<version>/, where
# `obsgen check` finds them. Made byte-identical to the Operator's published v0.93.0 CRDs (apart
# from the version annotation its release script appends) when this step was written.
CRD_DIR=$TOOLS/share/prometheus-operator-crds/v${VERSION[k8s-check]}
crds_generate() {
  local module_dir work status=0
  [[ -x $BIN/controller-gen ]] || { echo "controller-gen is not installed"; return 1; }
  module_dir=$(go mod download -json "$KC_MOD@v${VERSION[k8s-check]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || return 1
  work=$(mktemp -d "$TOOLS/stage.XXXXXX")
  cp -r "$module_dir/." "$work/" && chmod -R u+w "$work" || status=1
  if ((status == 0)); then
    rm -rf "$CRD_DIR.new" && mkdir -p "$CRD_DIR.new"
    (cd "$work" && "$BIN/controller-gen" crd:crdVersions=v1 paths=./v1/. paths=./v1alpha1/. "output:crd:dir=$CRD_DIR.new") || status=$?
  fi
  if ((status == 0)) && compgen -G "$CRD_DIR.new/monitoring.coreos.com_*.yaml" >/dev/null; then
    rm -rf "$CRD_DIR" && mv "$CRD_DIR.new" "$CRD_DIR"
  else
    status=1
  fi
  rm -rf "$work" "$CRD_DIR.new"
  return "$status"
}
t0=$(now_ms)
CRD_KEY="$KC_MOD v${VERSION[k8s-check]} | controller-gen ${VERSION[controller-gen]}"
if [[ -f $STATE/operator-crds.key && $(<"$STATE/operator-crds.key") == "$CRD_KEY" && -d $CRD_DIR ]]; then
  add_row operator-crds "${VERSION[k8s-check]}" "controller-gen (cached)" "$CRD_DIR" "$(secs_since "$t0")"
elif crds_generate >"$STATE/operator-crds.log" 2>&1; then
  echo "$CRD_KEY" >"$STATE/operator-crds.key"
  add_row operator-crds "${VERSION[k8s-check]}" "controller-gen" "$CRD_DIR" "$(secs_since "$t0")"
else
  rm -f "$STATE/operator-crds.key"
  add_row operator-crds "-" "not generated" "-" "$(secs_since "$t0")"
  MISSING+=(operator-crds)
  add_note "operator-crds: generation failed (log: $STATE/operator-crds.log): $(tail -n 3 "$STATE/operator-crds.log" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------
# 6. go install: Centrifugo, the peer server bench/ runs side by side (version stamped as its
#    release builds do; without it `centrifugo version` says 0.0.0)
# ---------------------------------------------------------------------------------------------
CF_MOD=github.com/centrifugal/centrifugo/v6
CF_LDFLAGS="-s -w -X $CF_MOD/internal/build.Version=${VERSION[centrifugo]}"
centrifugo_build() { go_install_recipe "$CF_LDFLAGS" centrifugo=centrifugo -- "$CF_MOD@${MODULE_VERSION[centrifugo]}"; }
SOURCE="go install $CF_MOD@${MODULE_VERSION[centrifugo]}"
cached_step centrifugo "$SOURCE | $CF_LDFLAGS | $GO_VERSION" centrifugo_build centrifugo

# ---------------------------------------------------------------------------------------------
# 7. The exporters the local target runs as processes, at the compose images' versions:
#    node_exporter by go install; blackbox_exporter in a throwaway module, because the proxy
#    refuses its version list (403), which `go install` reads for deprecation notices.
# ---------------------------------------------------------------------------------------------
NE_MOD=github.com/prometheus/node_exporter
NE_LDFLAGS=$(prom_ldflags "${VERSION[node_exporter]}" "${MODULE_VERSION[node_exporter]}")
node_exporter_build() { go_install_recipe "$NE_LDFLAGS" node_exporter=node_exporter -- "$NE_MOD@${MODULE_VERSION[node_exporter]}"; }
SOURCE="go install $NE_MOD@${MODULE_VERSION[node_exporter]}"
cached_step node_exporter "$SOURCE | $NE_LDFLAGS | $GO_VERSION" node_exporter_build node_exporter

BB_TARGET=github.com/prometheus/blackbox_exporter@${MODULE_VERSION[blackbox_exporter]}
BB_LDFLAGS=$(prom_ldflags "${VERSION[blackbox_exporter]}" "${MODULE_VERSION[blackbox_exporter]}")
blackbox_build() {
  tool_module_recipe "$SRC/blackbox-${VERSION[blackbox_exporter]}" "$BB_LDFLAGS" blackbox_exporter=blackbox_exporter "$BB_TARGET"
}
SOURCE="go get -tool $BB_TARGET"
cached_step blackbox_exporter "$SOURCE | $BB_LDFLAGS | $GO_VERSION" blackbox_build blackbox_exporter

# Debian tools, for the table.
add_row redis-server "$(deb_version redis-server)" "debian" "$(command -v redis-server || echo -)" "-"

# ---------------------------------------------------------------------------------------------
# Summary (stdout), also kept as $OBSGEN_TOOLS/installed.tsv for obsgen and people.
# ---------------------------------------------------------------------------------------------
{
  printf 'tool\tversion\tsource\tpath\tbuild time (this run)\n'
  for row in "${ROWS[@]}"; do tr '|' '\t' <<<"$row"; done
} >"$TOOLS/installed.tsv"
echo
column -t -s $'\t' "$TOOLS/installed.tsv" 2>/dev/null || cat "$TOOLS/installed.tsv"
echo
echo "Debian packages checked in $DEB_TIME; collector core v$COLLECTOR_VERSION / stable $COLLECTOR_STABLE_VERSION;" \
     "$GO_VERSION; Go caches: $(go env GOMODCACHE) $(go env GOCACHE); whole run $(secs_since "$SCRIPT_START")"
for line in "${NOTES[@]}"; do echo "note: $line"; done
echo "Tools are in $BIN: obsgen and the tests look there (then in the default dir, then on PATH)."
if ((${#MISSING[@]})); then
  echo "install-tools: not built: ${MISSING[*]}" >&2
  exit 1
fi
