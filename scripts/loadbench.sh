#!/usr/bin/env bash
# Config loading figures (docs/BENCHMARKS.md, "Config loading"): for each
# kind (port, sni) and rule count, the time and peak RSS of --validate, the
# time to start (until "dynamic-proxy started") and the peak RSS of the
# running proxy, and the time of a SIGHUP reload that changes one backend
# address (until "config reloaded").
#   scripts/loadbench.sh [RULES...]      default: 1000 2000 4000 10000 50000
# DP=PATH measures that binary instead of building bin/dynamic-proxy (an
# older build, for a before/after); WAIT is the longest wait in seconds for
# the start or a reload (default 60).
# Port rules need a descriptor per listener: start-up is skipped above
# 15000 of them (the descriptor limit here is 20,000).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 2000 4000 10000 50000)
dp=${DP:-bin/dynamic-proxy}
[ -n "${DP:-}" ] || go build -o bin/dynamic-proxy ./cmd/dynamic-proxy
go build -o bin/genconfig ./tools/genconfig
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

now() { date +%s.%N; }
# wait_log FILE PATTERN PID: until PATTERN is in FILE (60 s at most, and
# while PID runs).
wait_log() {
	local end=$((SECONDS + ${WAIT:-60}))
	until grep -q "$2" "$1" 2>/dev/null; do
		if [ $SECONDS -ge $end ] || ! kill -0 "$3" 2>/dev/null; then
			echo "no '$2' in $1" >&2
			tail -5 "$1" >&2
			return 1
		fi
		sleep 0.01
	done
}
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

printf "%-5s %6s %12s %14s %10s %14s %10s\n" kind rules validate_ms validate_rss_mb start_ms running_rss_mb reload_ms
for kind in port sni; do
	for n in "${counts[@]}"; do
		cfg=$dir/$kind-$n.toml
		bin/genconfig -kind "$kind" -rules "$n" -metrics 127.0.0.1:0 -admin 127.0.0.1:0 -o "$cfg"
		/usr/bin/time -f "%e %M" -o "$dir/time" "$dp" --validate -c "$cfg" >/dev/null
		read -r vs vkb <"$dir/time"
		vms=$(awk -v s="$vs" 'BEGIN { printf "%.0f", s * 1000 }')
		vmb=$((vkb / 1024))
		if [ "$kind" = port ] && [ "$n" -gt 15000 ]; then
			printf "%-5s %6d %12s %14s %10s %14s %10s\n" "$kind" "$n" "$vms" "$vmb" - - -
			continue
		fi
		log=$dir/$kind-$n.log # a new file: the background start truncates asynchronously
		t0=$(now)
		"$dp" -c "$cfg" 2>"$log" &
		pid=$!
		wait_log "$log" "dynamic-proxy started" "$pid"
		t1=$(now)
		# One rule's backend address changes: a new file, renamed over the old.
		sed 's/address = "127.0.0.1:40007"/address = "127.0.0.1:39999"/' "$cfg" >"$cfg.new"
		mv "$cfg.new" "$cfg"
		t2=$(now)
		kill -HUP "$pid"
		wait_log "$log" "config reloaded\|reload failed" "$pid"
		t3=$(now)
		grep -q "reload failed" "$log" && { grep "reload failed" "$log" >&2; exit 1; }
		rss=$(awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$pid/status")
		kill -TERM "$pid"
		wait "$pid" || true
		printf "%-5s %6d %12s %14s %10s %14s %10s\n" "$kind" "$n" "$vms" "$vmb" "$(ms "$t0" "$t1")" "$rss" "$(ms "$t2" "$t3")"
	done
done
