#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# when it is missing, then runs the checks and every test with -race.
#   make test        (or: bash scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH)/bin:/usr/sbin:/sbin"

STATICCHECK_VERSION=v0.8.2

# --- install what is missing -------------------------------------------------
# Debian packages the tests use, as package:command, or package:/path for
# a package without a command (gcc and liburing-dev: bench's tests build
# the floor relays, bench/floor/floor.c and floor_uring.c). Tests that need
# one fail (they do not skip) when it is missing, so it is installed here.
APT_NEEDS=(chromium:chromium redis-server:redis-server redis-tools:redis-cli redis-sentinel:redis-sentinel openssl:openssl util-linux:prlimit systemd:systemd-analyze dnsmasq-base:dnsmasq bind9-dnsutils:dig pebble:pebble gcc:cc liburing-dev:/usr/include/liburing.h)
need_apt=()
for pkg_cmd in "${APT_NEEDS[@]}"; do
	pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd#*:}
	if [[ $cmd == /* ]]; then
		[ -e "$cmd" ] || need_apt+=("$pkg")
	else
		command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
	fi
done
if [ ${#need_apt[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "test.sh: installing ${need_apt[*]}"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
	else
		echo "test.sh: missing ${need_apt[*]} and cannot apt-get install them" >&2
		exit 1
	fi
fi
if ! command -v staticcheck >/dev/null 2>&1 || ! staticcheck -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
	echo "test.sh: installing staticcheck $STATICCHECK_VERSION"
	go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi
go mod download

# --- static checks -----------------------------------------------------------
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './vendor/*'))
if [ -n "$unformatted" ]; then
	echo "gofmt: these files need formatting:" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== cross-builds and vet, tests included (darwin, freebsd, windows)"
for goos in darwin freebsd windows; do
	GOOS=$goos go build ./...
	GOOS=$goos go vet ./...
done

# --- tests -------------------------------------------------------------------
echo "== go test -race"
go test -race -count=1 -timeout 20m ./... 2>&1 | tee /tmp/dynamic-proxy-test.log
# The fleet tests again, against a Redis Cluster of three masters
# (redistest.Start gives one under DP_TEST_REDIS=cluster).
echo "== go test -race: TestFleet* on a Redis Cluster"
DP_TEST_REDIS=cluster go test -race -count=1 -timeout 10m -run '^TestFleet' ./test/e2e/ 2>&1 | tee -a /tmp/dynamic-proxy-test.log

# The end-to-end suite again on the goroutine engine (the run above used
# the default: epoll on Linux).
echo "== go test -race ./test/e2e (engine = goroutine)"
E2E_ENGINE=goroutine go test -race -count=1 -timeout 20m ./test/e2e/... 2>&1 | tee -a /tmp/dynamic-proxy-test.log

# --- fuzzing, bounded ----------------------------------------------------------
# Each fuzz target runs briefly on top of its seed corpus (the seeds also run
# as plain tests above). FUZZTIME=0 skips this; a crash found here is saved in
# the package's testdata/fuzz and becomes a regression test. The default is
# a count of executions, not a duration: a duration's deadline can fail a
# clean run with "context deadline exceeded" in Go 1.26 (golang/go#75804).
FUZZTIME=${FUZZTIME:-40000x}
if [ "$FUZZTIME" != "0" ]; then
	for target in "FuzzParse ./internal/config" "FuzzClientHello ./internal/peek" \
		"FuzzHTTPHost ./internal/peek" "FuzzQUICInitial ./internal/peek" "FuzzQUICConnectionIDs ./internal/proxy" "FuzzQuestion ./internal/dnsmsg" "FuzzDNSIDs ./internal/proxy" "FuzzReadProxyHeader ./internal/proxy"; do
		set -- $target
		echo "== fuzz $1 ($FUZZTIME)"
		go test -run '^$' -fuzz "^$1\$" -fuzztime "$FUZZTIME" "$2"
	done
fi
echo "== done"
