#!/usr/bin/env bash
# bench-discovery.sh: proxy CPU per connection under connection churn, with
# the backends static in the file, discovered from DNS with a 1 s TTL, and
# discovered with a 1 s TTL while the answer changes every second (an
# address leaves and comes back, so an apply runs each time). Rounds
# interleave the three; each prints the median and the min–max.
#
#   ROUNDS=5 RATE=4000 FOR=10s bash scripts/bench-discovery.sh
#
# Needs dnsmasq. CPU is utime+stime of the proxy from /proc/PID/stat.
set -euo pipefail
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-4000}
FOR=${FOR:-10s}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/dp" ./cmd/dynamic-proxy
go build -o "$work/bench" ./bench
BPORT=29301 LPORT=29300 DNSPORT=29353
for i in 2 3 4; do "$work/bench" -mode echo -listen "127.0.0.$i:$BPORT" & pids+=($!); done
full="127.0.0.2 web.test
127.0.0.3 web.test
127.0.0.4 web.test"
less="127.0.0.2 web.test
127.0.0.3 web.test"
echo "$full" > "$work/hosts"
dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
  --port=$DNSPORT --pid-file= --user="$(id -un)" --local=/test/ --local-ttl=1 --addn-hosts="$work/hosts" 2>/dev/null & dns=$!
pids+=($dns)
common="[server]
tcp_bind = \"127.0.0.1:$LPORT\"
watch_config = false
[metrics]
bind = \"127.0.0.1:0\"
[admin]
bind = \"\"
[health_check]
interval = \"1s\"
timeout = \"500ms\"
[[rules]]
name = \"web\""
printf '%s\n' "$common" > "$work/static.toml"
for i in 2 3 4; do printf '[[rules.backends]]\nid = "b%s"\naddress = "127.0.0.%s:%s"\n' $i $i $BPORT >> "$work/static.toml"; done
printf '%s\n[[rules.discovery]]\nname = "web.test:%s"\nresolver = "127.0.0.1:%s"\nmin_ttl = "1s"\nmax_ttl = "1s"\nempty_grace = "0s"\n' "$common" $BPORT $DNSPORT > "$work/dns.toml"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
run() { # variant -> prints µs of proxy CPU per connection
  local variant=$1 cfg=$work/static.toml flap=
  [[ $variant != static ]] && cfg=$work/dns.toml
  "$work/dp" -c "$cfg" > "$work/log" 2>&1 & local dp=$!
  sleep 0.2; [[ -n ${DEBUG:-} ]] && head -5 "$work/log" >&2
  for _ in $(seq 200); do grep -q "dynamic-proxy started" "$work/log" && break; sleep 0.05; done
  if [[ $variant != static ]]; then
    for _ in $(seq 200); do [[ $(grep -c "backend up" "$work/log") -ge 3 ]] && break; sleep 0.05; done
  fi
  if [[ $variant == dns-changing ]]; then
    ( while :; do echo "$less" > "$work/hosts"; kill -HUP $dns; sleep 1; echo "$full" > "$work/hosts"; kill -HUP $dns; sleep 1; done ) & flap=$!
  fi
  local t0; t0=$(ticks $dp)
  local out; out=$("$work/bench" -mode churn -target "127.0.0.1:$LPORT" -rate "$RATE" -for "$FOR")
  local t1; t1=$(ticks $dp)
  [[ -n $flap ]] && kill $flap && wait $flap 2>/dev/null || true
  echo "$full" > "$work/hosts"; kill -HUP $dns
  local changes; changes=$(grep -c "discovery: backends changed" "$work/log" || true)
  kill $dp; wait $dp 2>/dev/null || true
  [[ -n ${DEBUG:-} ]] && tail -5 "$work/log" >&2
  local ops; ops=$(echo "$out" | awk '{print $1}')
  local errs; errs=$(echo "$out" | sed -E 's/.* ([0-9]+) errors.*/\1/')
  awk -v t=$((t1 - t0)) -v hz="$hz" -v ops="$ops" -v e="$errs" -v c="$changes" -v v="$variant" \
    'BEGIN { printf "%s %.2f %d %d %d\n", v, t * 1e6 / hz / ops, ops, e, c }'
}
variants=(static dns-1s-ttl dns-changing)
: > "$work/results"
for r in $(seq "$ROUNDS"); do
  for k in 0 1 2; do
    v=${variants[$(((k + r) % 3))]}
    line=$(run "$v"); echo "round $r: $line" >&2; echo "$line" >> "$work/results"
  done
done
echo "| backends | proxy CPU µs/conn, median (min–max) | connections per run | errors | applies per run |"
echo "|---|---|---|---|---|"
for v in "${variants[@]}"; do
  grep "^$v " "$work/results" | sort -k2 -n | awk -v v="$v" '{a[NR]=$2; o+=$3; e+=$4; c+=$5} END {
    printf "| %s | %.2f (%.2f–%.2f) | %d | %d | %.1f |\n", v, a[int((NR+1)/2)], a[1], a[NR], o/NR, e, c/NR }'
done
