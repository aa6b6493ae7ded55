#!/usr/bin/env bash
# Install and build the real tools obsgen checks and runs its rendered stack with:
#   Debian packages   prometheus (+ promtool), prometheus-alertmanager (+ amtool), redis-server,
#                     docker-compose
#   collector builder otelcol, from collector/builder-config.yaml at the pinned collector version
#   go install        amtool and alertmanager (as new as `go install` can build), Jaeger v2;
#                     Prometheus 3 is attempted once and falls back to Debian's 2.x.
# Versions come from stack/data/versions.yaml. Everything built lands in $OBSGEN_TOOLS/bin
# (default <repo>/.tools/bin). Idempotent: a tool whose binary reports the right version and whose
# cache key (version + build inputs) is unchanged is not rebuilt, and a build that failed is not
# retried for the same key unless --retry-failed is given. Never downloads a prebuilt binary: the
# Go module proxy is used only through `go install MODULE@VERSION` and the collector builder.
#
# Usage: scripts/install-tools.sh [--retry-failed]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${OBSGEN_TOOLS:-$REPO/.tools}
BIN=$TOOLS/bin
STATE=$TOOLS/state   # cache keys (*.key), cached failures (*.failed), build logs (*.log)
GO_BIN_DIR=$TOOLS/go/bin
MANIFEST=$REPO/collector/builder-config.yaml
VERSIONS=$REPO/stack/data/versions.yaml
RETRY_FAILED=0

for arg in "$@"; do
  case $arg in
    --retry-failed) RETRY_FAILED=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-tools: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# Compiled Go objects are cached under $OBSGEN_TOOLS (delete it for a truly fresh build);
# downloaded modules stay in the standard module cache, shared with other Go work.
export GOCACHE=${OBSGEN_GOCACHE:-$TOOLS/go/cache}
export GOTOOLCHAIN=local   # build with the installed Go; never fetch a toolchain behind our back
export GOFLAGS=${GOFLAGS:-"-buildvcs=false"}
mkdir -p "$BIN" "$STATE" "$GO_BIN_DIR" "$GOCACHE"

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

# ---------------------------------------------------------------------------------------------
# Pinned versions (one place: stack/data/versions.yaml) and the manifest's agreement with them.
# ---------------------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is needed to read $VERSIONS"
python3 -c 'import yaml' 2>/dev/null \
  || die "python3 cannot import yaml: pip install -e . (or apt-get install python3-yaml) first"
pin() {
  python3 - "$VERSIONS" "$1" <<'PY'
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as f:
    print(yaml.safe_load(f)[sys.argv[2]]["version"])
PY
}
COLLECTOR_VERSION=$(pin collector)
PROMETHEUS_VERSION=$(pin prometheus)
ALERTMANAGER_VERSION=$(pin alertmanager)
JAEGER_VERSION=$(pin jaeger)

# Alertmanager's cmd/alertmanager embeds a UI build (ui/app/dist) from v0.32 on, which the Go
# module does not ship, so `go install` of it fails there; v0.31.0 is the newest that builds.
ALERTMANAGER_GO_FALLBACK=0.31.0
# Jaeger's module path has no /v2, so `go install ...@v2.x` is refused: build the commit the v2
# tag points at. Add a line here when versions.yaml moves Jaeger (git rev-list -n1 v<version>).
jaeger_tag_commit() {
  case $1 in
    2.20.0) echo 798e4b0fcf22609e381df764a01461affd813e1e ;;
    *) return 1 ;;
  esac
}

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
DEB_PACKAGES=(prometheus prometheus-alertmanager redis-server docker-compose)
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
  # Keep apt from starting redis-server, prometheus and alertmanager as system services: tests and
  # `obsgen up` start their own on free ports. policy-rc.d exit 101 = "action forbidden".
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
command -v go >/dev/null || die "Go is needed to build the collector (install Go >= 1.25)"
GO_VERSION=$(go env GOVERSION)

# first_line CMD...: the first line a version command prints (stdout or stderr), or nothing.
first_line() { "$@" 2>&1 | head -n1 || true; }

# is_cached NAME KEY CHECK...: the binary exists, was built with KEY, and CHECK succeeds.
is_cached() {
  local name=$1 key=$2; shift 2
  [[ -x $BIN/$name && -f $STATE/$name.key && $(<"$STATE/$name.key") == "$key" ]] && "$@" >/dev/null 2>&1
}
# failed_before NAME KEY: this exact build failed before (and --retry-failed was not given).
failed_before() {
  ((RETRY_FAILED == 0)) && [[ -f $STATE/$1.failed && $(head -n1 "$STATE/$1.failed") == "$2" ]]
}
record_failure() {  # NAME KEY LOG
  { echo "$2"; grep -v '^go: downloading' "$3" | tail -n 8; } >"$STATE/$1.failed"
}
failure_reason() { tail -n +2 "$STATE/$1.failed" | grep -v '^\s*$' | tail -n 4 | tr '\n\t' '  ' | sed 's/  */ /g'; }

# go_install NAME PACKAGE@REF LDFLAGS: build one command into $BIN/NAME; returns 1 on failure
# (the log stays in $STATE/NAME.log and the failure is cached under the key).
go_install() {
  local name=$1 target=$2 ldflags=$3 stage
  stage=$(mktemp -d "$TOOLS/go/stage.XXXXXX")
  if GOBIN=$stage go install -trimpath -ldflags "$ldflags" "$target" >"$STATE/$name.log" 2>&1; then
    local built
    built=$(find "$stage" -maxdepth 1 -type f | head -n1)
    install -m 0755 "$built" "$BIN/$name.new" && mv -f "$BIN/$name.new" "$BIN/$name"
    rm -rf "$stage"
    return 0
  fi
  rm -rf "$stage"
  return 1
}

# prometheus/common/version variables, as Prometheus' own release builds (promu) set them.
prom_ldflags() {
  echo "-s -w -X github.com/prometheus/common/version.Version=$1" \
       "-X github.com/prometheus/common/version.Branch=v$1" \
       "-X github.com/prometheus/common/version.BuildUser=obsgen-install-tools"
}

# ---------------------------------------------------------------------------------------------
# 2. The OpenTelemetry Collector, built by its official builder from our manifest
# ---------------------------------------------------------------------------------------------
build_collector() {
  local builder=$GO_BIN_DIR/builder t0 key status=0
  t0=$(now_ms)
  if first_line "$builder" version | grep -qF "v$COLLECTOR_VERSION"; then
    add_row builder "$COLLECTOR_VERSION" "go install (cached)" "$builder" "$(secs_since "$t0")"
  else
    note "building the collector builder v$COLLECTOR_VERSION (go install)"
    GOBIN=$GO_BIN_DIR go install "go.opentelemetry.io/collector/cmd/builder@v$COLLECTOR_VERSION" \
      >"$STATE/builder.log" 2>&1 || { cat "$STATE/builder.log" >&2; die "go install of the collector builder failed"; }
    add_row builder "$COLLECTOR_VERSION" "go install" "$builder" "$(secs_since "$t0")"
  fi
  t0=$(now_ms)
  local manifest_hash
  manifest_hash=$(sha256sum "$MANIFEST" | cut -c1-16)
  key="otelcol $COLLECTOR_VERSION manifest:$manifest_hash $GO_VERSION"
  if is_cached otelcol "$key" otelcol_reports_version; then
    add_row otelcol "$COLLECTOR_VERSION" "builder (cached)" "$BIN/otelcol" "$(secs_since "$t0")"
    return 0
  fi
  note "building otelcol $COLLECTOR_VERSION with the builder (a few minutes on 2 cores)"
  local work=$TOOLS/build
  mkdir -p "$work"
  rm -rf "$work/otelcol-build"
  # output_path in the manifest is relative: run the builder from $work.
  (cd "$work" && "$builder" --config "$MANIFEST" --skip-strict-versioning=false) \
    >"$STATE/otelcol.log" 2>&1 || status=$?
  if ((status != 0)); then
    tail -n 30 "$STATE/otelcol.log" >&2
    die "the collector build failed (full log: $STATE/otelcol.log)"
  fi
  install -m 0755 "$work/otelcol-build/otelcol" "$BIN/otelcol.new" && mv -f "$BIN/otelcol.new" "$BIN/otelcol"
  otelcol_reports_version || die "$BIN/otelcol does not report version $COLLECTOR_VERSION"
  echo "$key" >"$STATE/otelcol.key"
  add_row otelcol "$COLLECTOR_VERSION" "builder" "$BIN/otelcol" "$(secs_since "$t0")"
}
otelcol_reports_version() { [[ $(first_line "$BIN/otelcol" --version) == "otelcol version $COLLECTOR_VERSION" ]]; }

# ---------------------------------------------------------------------------------------------
# 3. go install: amtool, alertmanager, Jaeger v2, Prometheus 3 (attempt)
# ---------------------------------------------------------------------------------------------
reports_version() {  # BINARY VERSION: the binary's --version line names VERSION
  first_line "$1" --version | grep -qE "version v?${2//./\\.}([^0-9.]|$)"
}

# build_prom_tool NAME STATE PACKAGE VERSION: go install PACKAGE@vVERSION as $BIN/NAME. A failure
# is cached under STATE (one per version, so a failed newer attempt stays cached after an older
# version builds).
build_prom_tool() {
  local name=$1 state=$2 package=$3 version=$4 t0 key
  t0=$(now_ms)
  key="$package@v$version $GO_VERSION"
  if is_cached "$name" "$key" reports_version "$BIN/$name" "$version"; then
    add_row "$name" "$version" "go install (cached)" "$BIN/$name" "$(secs_since "$t0")"
    return 0
  fi
  if failed_before "$state" "$key"; then
    add_note "$name v$version: go install failed (cached; --retry-failed retries): $(failure_reason "$state")"
    return 1
  fi
  note "go install $package@v$version"
  if go_install "$name" "$package@v$version" "$(prom_ldflags "$version")" \
      && reports_version "$BIN/$name" "$version"; then
    echo "$key" >"$STATE/$name.key"
    rm -f "$STATE/$state.failed"
    add_row "$name" "$version" "go install" "$BIN/$name" "$(secs_since "$t0")"
    return 0
  fi
  record_failure "$state" "$key" "$STATE/$name.log"
  add_note "$name v$version: go install failed after $(secs_since "$t0"): $(failure_reason "$state")"
  return 1
}

build_amtool() {
  build_prom_tool amtool amtool-"$ALERTMANAGER_VERSION" github.com/prometheus/alertmanager/cmd/amtool \
    "$ALERTMANAGER_VERSION" && return 0
  # Debian's amtool stays on PATH.
  rm -f "$BIN/amtool"
  add_row amtool "$(deb_version prometheus-alertmanager)" "debian" "$(command -v amtool || echo -)" "-"
}

build_alertmanager() {
  # The pinned version first (a failure is cached, so one quick attempt per version), then the
  # newest that `go install` builds.
  local version
  for version in "$ALERTMANAGER_VERSION" "$ALERTMANAGER_GO_FALLBACK"; do
    if build_prom_tool alertmanager alertmanager-"$version" github.com/prometheus/alertmanager/cmd/alertmanager \
        "$version"; then
      return 0
    fi
  done
  # No Go build: give Debian's prometheus-alertmanager its upstream name.
  local debian
  debian=$(command -v prometheus-alertmanager) || die "prometheus-alertmanager is not installed"
  ln -sfn "$debian" "$BIN/alertmanager"
  rm -f "$STATE/alertmanager.key"
  add_row alertmanager "$(deb_version prometheus-alertmanager)" "debian (symlink)" "$BIN/alertmanager -> $debian" "-"
}

build_jaeger() {
  local t0 commit key module=github.com/jaegertracing/jaeger
  t0=$(now_ms)
  # A Jaeger of another version must not stay on PATH when this one is not built.
  if ! commit=$(jaeger_tag_commit "$JAEGER_VERSION"); then
    rm -f "$BIN/jaeger" "$STATE/jaeger.key"
    add_row jaeger "-" "not built" "-" "-"
    add_note "jaeger v$JAEGER_VERSION: no tag commit recorded in $0 (jaeger_tag_commit)"
    return 0
  fi
  key="$module/cmd/jaeger@$commit v$JAEGER_VERSION $GO_VERSION"
  if is_cached jaeger "$key" jaeger_reports_version; then
    add_row jaeger "$JAEGER_VERSION" "go install (cached)" "$BIN/jaeger" "$(secs_since "$t0")"
    return 0
  fi
  if failed_before jaeger "$key"; then
    rm -f "$BIN/jaeger" "$STATE/jaeger.key"
    add_row jaeger "-" "not built" "-" "-"
    add_note "jaeger v$JAEGER_VERSION: go install failed (cached; --retry-failed retries): $(failure_reason jaeger)"
    return 0
  fi
  note "go install $module/cmd/jaeger@$commit (tag v$JAEGER_VERSION; a few minutes)"
  local ldflags="-s -w -X $module/internal/version.latestVersion=v$JAEGER_VERSION -X $module/internal/version.commitSHA=$commit"
  if go_install jaeger "$module/cmd/jaeger@$commit" "$ldflags" && jaeger_reports_version; then
    echo "$key" >"$STATE/jaeger.key"
    rm -f "$STATE/jaeger.failed"
    add_row jaeger "$JAEGER_VERSION" "go install" "$BIN/jaeger" "$(secs_since "$t0")"
    return 0
  fi
  record_failure jaeger "$key" "$STATE/jaeger.log"
  rm -f "$BIN/jaeger" "$STATE/jaeger.key"
  add_row jaeger "-" "not built" "-" "$(secs_since "$t0")"
  add_note "jaeger v$JAEGER_VERSION: go install failed: $(failure_reason jaeger)"
}
jaeger_reports_version() { "$BIN/jaeger" version 2>/dev/null | grep -qF "\"gitVersion\":\"v$JAEGER_VERSION\""; }

# Prometheus publishes 3.x as Go module versions v0.3MM.P (3.14.0 -> v0.314.0): `@v3.14.0` does
# not exist in the module proxy. Its go.mod carries replace/exclude directives, which `go install
# MODULE@VERSION` refuses; we try once per version (failure cached) and fall back to Debian's 2.x.
try_prometheus3() {
  local major minor patch gover key t0
  t0=$(now_ms)
  IFS=. read -r major minor patch <<<"$PROMETHEUS_VERSION"
  gover=$(printf 'v0.%d%02d.%d' "$major" "$minor" "$patch")
  key="github.com/prometheus/prometheus/cmd/prometheus@$gover $GO_VERSION"
  if is_cached prometheus "$key" reports_version "$BIN/prometheus" "$PROMETHEUS_VERSION"; then
    add_row prometheus "$PROMETHEUS_VERSION" "go install (cached)" "$BIN/prometheus" "$(secs_since "$t0")"
    return 0
  fi
  if failed_before prometheus "$key"; then
    add_note "prometheus $PROMETHEUS_VERSION: go install ...@$gover failed (cached): $(failure_reason prometheus)"
  else
    note "go install github.com/prometheus/prometheus/cmd/prometheus@$gover (Prometheus $PROMETHEUS_VERSION)"
    if go_install prometheus "github.com/prometheus/prometheus/cmd/prometheus@$gover" \
        "$(prom_ldflags "$PROMETHEUS_VERSION")" && reports_version "$BIN/prometheus" "$PROMETHEUS_VERSION"; then
      echo "$key" >"$STATE/prometheus.key"
      rm -f "$STATE/prometheus.failed"
      add_row prometheus "$PROMETHEUS_VERSION" "go install" "$BIN/prometheus" "$(secs_since "$t0")"
      return 0
    fi
    record_failure prometheus "$key" "$STATE/prometheus.log"
    add_note "prometheus $PROMETHEUS_VERSION: go install ...@$gover failed after $(secs_since "$t0"): $(failure_reason prometheus)"
  fi
  rm -f "$BIN/prometheus" "$STATE/prometheus.key"
  add_row prometheus "$(deb_version prometheus)" "debian" "$(command -v prometheus)" "-"
}

build_collector
build_amtool
build_alertmanager
build_jaeger
try_prometheus3

# Debian tools, for the table.
add_row promtool "$(deb_version prometheus)" "debian" "$(command -v promtool)" "-"
add_row prometheus-alertmanager "$(deb_version prometheus-alertmanager)" "debian" "$(command -v prometheus-alertmanager)" "-"
add_row redis-server "$(deb_version redis-server)" "debian" "$(command -v redis-server)" "-"
add_row docker-compose "$(deb_version docker-compose)" "debian" "$(command -v docker-compose)" "-"

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
echo "Debian packages checked in $DEB_TIME; collector core v$COLLECTOR_VERSION / stable $COLLECTOR_STABLE_VERSION; Go $GO_VERSION"
for line in "${NOTES[@]}"; do echo "note: $line"; done
echo "Put $BIN first on PATH (tests do this themselves)."
