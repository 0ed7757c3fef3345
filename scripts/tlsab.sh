#!/usr/bin/env bash
# tlsab.sh A B [ROUNDS] [SECONDS]: CPU per full TLS handshake of two
# dynamic-proxy binaries (or wrappers that exec one, e.g. to set GOGC),
# loaded at the same time so that a noisy host slows both alike. Each
# round starts both on a TLS-terminating rule in front of one echo backend,
# drives each with `bench -mode tls` (8 closed-loop clients, full ECDSA
# P-256 handshakes, 64 bytes echoed), and prints each one's proxy CPU per
# handshake (/proc/PID/stat) and B's over A's.
#   bash scripts/tlsab.sh /tmp/dp-old bin/dynamic-proxy 5 8
set -euo pipefail
a=${1:?usage: tlsab.sh A B [ROUNDS] [SECONDS]}
b=${2:?usage: tlsab.sh A B [ROUNDS] [SECONDS]}
rounds=${3:-5}
secs=${4:-8}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

(cd "$root" && go build -o "$work/bench" ./bench && go build -o "$work/echo" ./tools/echo)
openssl ecparam -name prime256v1 -genkey -noout -out "$work/key.pem"
openssl req -new -x509 -key "$work/key.pem" -out "$work/cert.pem" -days 2 \
	-subj /CN=bench.example -addext subjectAltName=DNS:bench.example 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(free_port)
"$work/echo" -listen "127.0.0.1:$echo_port" -name echo >/dev/null 2>&1 &
pids+=($!)

# config NAME PORT ADMIN: a proxy terminating TLS on PORT to the echo backend.
config() {
	cat >"$work/$1.toml" <<CONF
[server]
tcp_bind = "127.0.0.1:$2"
watch_config = false
[admin]
bind = "127.0.0.1:$3"
[metrics]
bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "tls"
protocol = "tcp"
[rules.tls]
certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }]
[[rules.backends]]
id = "echo"
address = "127.0.0.1:$echo_port"
CONF
}
pa=$(free_port) aa=$(free_port) pb=$(free_port) ab=$(free_port)
config a "$pa" "$aa"
config b "$pb" "$ab"
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
handshakes() { awk '{print $1}' "$1"; }

for r in $(seq "$rounds"); do
	"$a" -c "$work/a.toml" >"$work/a.log" 2>&1 &
	ida=$!
	"$b" -c "$work/b.toml" >"$work/b.log" 2>&1 &
	idb=$!
	pids+=("$ida" "$idb")
	for _ in $(seq 100); do
		curl -fs -o /dev/null "127.0.0.1:$aa/" && curl -fs -o /dev/null "127.0.0.1:$ab/" && break
		sleep 0.1
	done
	"$work/bench" -mode tls -target "127.0.0.1:$pa" -for 1s >/dev/null & w=$! # warm both
	"$work/bench" -mode tls -target "127.0.0.1:$pb" -for 1s >/dev/null
	wait "$w"
	a0=$(cpu "$ida") b0=$(cpu "$idb")
	"$work/bench" -mode tls -target "127.0.0.1:$pa" -for "${secs}s" >"$work/la" & w=$!
	"$work/bench" -mode tls -target "127.0.0.1:$pb" -for "${secs}s" >"$work/lb"
	wait "$w"
	a1=$(cpu "$ida") b1=$(cpu "$idb")
	na=$(handshakes "$work/la") nb=$(handshakes "$work/lb")
	kill "$ida" "$idb"
	wait "$ida" "$idb" 2>/dev/null || true
	python3 -c "
ua=($a1-$a0)*1e6/$tck/$na; ub=($b1-$b0)*1e6/$tck/$nb
print(f'round $r: A {ua:.0f} µs/handshake ($na), B {ub:.0f} µs/handshake ($nb), B/A {ub/ua:.3f}')"
done
