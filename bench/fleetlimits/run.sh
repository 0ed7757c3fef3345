#!/usr/bin/env bash
# Accept latency with the fleet-wide access limits, Redis up against Redis
# stopped (SIGSTOP): one dynamic-proxy instance whose rule has every fleet
# limit set high enough never to refuse (so each connection goes through
# the fleet admission and the limits are synced every 150 ms), loaded by
# bench's churn mode (connect, 64 bytes echoed, close) in interleaved
# rounds. Prints p50/p99 per round.
#
#   bash bench/fleetlimits/run.sh [rounds=3] [rate=1000] [seconds=5]
#
# Everything runs on 127.0.0.1; every process it starts is stopped by PID.
set -euo pipefail
rounds=${1:-3} rate=${2:-1000} secs=${3:-5}
cd "$(dirname "$0")/../.."
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
go build -o "$dir/dp" ./cmd/dynamic-proxy
go build -o "$dir/bench" ./bench
rport=$(free_port) eport=$(free_port) pport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
rpid=$!; pids+=("$rpid")
"$dir/bench" -mode echo -listen "127.0.0.1:$eport" 2>/dev/null &
pids+=("$!")
cat >"$dir/dp.toml" <<TOML
[server]
tcp_bind = "127.0.0.1:$pport"
[redis]
url = "redis://127.0.0.1:$rport"
[metrics]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = "127.0.0.1:$eport"
[rules.access]
fleet_max_connections_per_ip = 100000
fleet_connection_rate_per_ip = 100000
fleet_connection_burst_per_ip = 100000
fleet_connection_rate = 100000
fleet_connection_burst = 100000
TOML
"$dir/dp" -c "$dir/dp.toml" >"$dir/dp.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q "dynamic-proxy started" "$dir/dp.log" && break; sleep 0.1; done
grep -q "dynamic-proxy started" "$dir/dp.log" || { cat "$dir/dp.log"; exit 1; }
sleep 1
for r in $(seq "$rounds"); do
  printf 'round %d redis up:      ' "$r"
  "$dir/bench" -mode churn -target "127.0.0.1:$pport" -rate "$rate" -for "${secs}s"
  kill -STOP "$rpid"
  sleep 1 # past the staleness (450 ms): on the local share
  printf 'round %d redis stopped: ' "$r"
  "$dir/bench" -mode churn -target "127.0.0.1:$pport" -rate "$rate" -for "${secs}s"
  kill -CONT "$rpid"
  sleep 1
done
grep -c "fleet-wide access limits not synced" "$dir/dp.log" | sed 's/^/fallback warnings logged: /'
