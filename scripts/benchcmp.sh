#!/usr/bin/env bash
# benchcmp.sh OLD [NEW]: the proxy's micro-benchmarks (per connection, per
# request, per datagram) at two commits, interleaved, compared by benchstat.
# NEW defaults to the working tree. Installs benchstat when it is missing.
#   bash scripts/benchcmp.sh main~3
#   COUNT=10 BENCH='BenchmarkTCP' PKG=./internal/proxy bash scripts/benchcmp.sh v1 v2
set -euo pipefail
old=${1:?usage: benchcmp.sh OLD [NEW]}
new=${2:-}
count=${COUNT:-6}
bench=${BENCH:-BenchmarkTCP|BenchmarkUDP}
pkg=${PKG:-./internal/proxy}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" 2>/dev/null || true; git -C "$root" worktree remove --force "$work/new" 2>/dev/null || true; rm -rf "$work"' EXIT

benchstat=$(go env GOPATH)/bin/benchstat
if [ ! -x "$benchstat" ]; then
	go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
fi

git -C "$root" worktree add -q --detach "$work/old" "$old"
(cd "$work/old" && go test -c -o "$work/old.test" "$pkg")
if [ -n "$new" ]; then
	git -C "$root" worktree add -q --detach "$work/new" "$new"
	(cd "$work/new" && go test -c -o "$work/new.test" "$pkg")
else
	(cd "$root" && go test -c -o "$work/new.test" "$pkg")
fi
dir="$root/${pkg#./}" # benchmarks read testdata relative to their package
for _ in $(seq "$count"); do # interleaved, so drift hits both alike
	(cd "$dir" && "$work/old.test" -test.run '^$' -test.bench "$bench" -test.benchmem >>"$work/old.txt")
	(cd "$dir" && "$work/new.test" -test.run '^$' -test.bench "$bench" -test.benchmem >>"$work/new.txt")
done
"$benchstat" "old=$work/old.txt" "new=$work/new.txt"
