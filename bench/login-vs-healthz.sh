#!/bin/bash
# The admin part of `cargo xtask bench` (a cached `POST /auth/login` against `GET /healthz`),
# for two admin builds side by side on a shared machine:
#
#   bench/login-vs-healthz.sh OLD_BIN NEW_BIN [PAIRS] [SECS]
#
# Each build serves a fresh sled store (release build expected; `serve` with the bench's
# raised limits) pinned to core 1; wrk (-t1 -c32, the bench's Lua body) pinned to core 0.
# Per pair, in turn: OLD login, OLD healthz, NEW login, NEW healthz, SECS seconds each
# (default 10 pairs of 3 s). Prints each run, then per build the medians over pairs: req/s,
# the per-pair login ÷ healthz req/s ratio, and admin's CPU time per request (utime+stime
# of the process over the run ÷ requests), which other load on the machine disturbs less.
set -euo pipefail
OLD=$1; NEW=$2; PAIRS=${3:-10}; SECS=${4:-3}
WORK=${TMPDIR:-/tmp}/keygate-login-bench; rm -rf "$WORK"; mkdir -p "$WORK"
OP=kgo_bench-operator-token-0123456789abcdefghij; PX=kgp_bench-proxy-token-0123456789abcdefghijklm
DONE='done = function(summary, latency, requests)
  io.write(string.format("BENCH %d %d %d %d %d %d %d\n", summary.requests, summary.duration, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end'
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A PID PORT BIN=([old]=$OLD [new]=$NEW)
trap 'kill ${PID[old]:-} ${PID[new]:-} 2>/dev/null || true' EXIT
for L in old new; do
  D=$WORK/$L; mkdir -p "$D"; PORT[$L]=$(free_port); P=${PORT[$L]}
  KEYGATE_OPERATOR_TOKEN=$OP KEYGATE_PROXY_TOKEN=$PX RUST_LOG=warn NO_COLOR=1 taskset -c 1 "${BIN[$L]}" serve --addr 127.0.0.1:$P \
    --data "$D/admin-data" --max-sessions-per-key 100000 --login-rate-per-client 1000000 --login-rate-per-key 1000000 > "$D/admin.log" 2>&1 &
  PID[$L]=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$P/healthz > /dev/null && break; sleep 0.1; done
  BIZ=$(curl -sf -X POST http://127.0.0.1:$P/v1/businesses -H "authorization: Bearer $OP" -H 'content-type: application/json' \
    -d '{"name":"Bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  KEY=$(curl -sf -X POST http://127.0.0.1:$P/v1/businesses/$BIZ/keys -H "authorization: Bearer $OP" -H 'content-type: application/json' \
    -d '{"kind":"sk","mode":"test"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  printf 'wrk.method = "POST"\nwrk.body = "{\\"api_key\\":\\"%s\\",\\"session_id\\":\\"bench\\"}"\nwrk.headers["Content-Type"] = "application/json"\n%s\n' \
    "$KEY" "$DONE" > "$D/login.lua"
  printf 'wrk.method = "GET"\n%s\n' "$DONE" > "$D/healthz.lua"
  # The first login opens the session; the warm-up second makes every later one a repeat.
  taskset -c 0 wrk -t1 -c32 -d1s -s "$D/login.lua" http://127.0.0.1:$P/auth/login > /dev/null
done
for r in $(seq "$PAIRS"); do
  for L in old new; do
    for p in login healthz; do
      path=/healthz; [ $p = login ] && path=/auth/login
      c0=$(awk '{print $14 + $15}' /proc/${PID[$L]}/stat)
      out=$(taskset -c 0 wrk -t1 -c32 -d${SECS}s --timeout 5s -s "$WORK/$L/$p.lua" http://127.0.0.1:${PORT[$L]}$path | grep '^BENCH')
      c1=$(awk '{print $14 + $15}' /proc/${PID[$L]}/stat)
      echo "$L $r $p $out $((c1 - c0)) $(getconf CLK_TCK)"
    done
  done
done | tee "$WORK/runs.txt" | awk '{printf "%s pair %s %-8s %9.0f req/s  non-2xx %s  p50 %.3f ms  p99 %.3f ms  admin CPU %.1f us/req\n", $1, $2, $3, $5 / ($6 / 1e6), $7, $9 / 1000, $10 / 1000, $12 * 1e6 / $13 / $5}'
echo "load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/runs.txt" <<'PY'
import statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    rps, cpu_us = int(f[4]) / (int(f[5]) / 1e6), int(f[11]) * 1e6 / int(f[12]) / int(f[4])
    if f[6] != "0":
        sys.exit(f"{f[0]} {f[2]}: {f[6]} answers were not 2xx")
    runs.setdefault(f[0], {}).setdefault(f[1], {})[f[2]] = (rps, cpu_us)
for build in ("old", "new"):
    pairs = runs[build].values()
    med = lambda part, i: st.median(p[part][i] for p in pairs)
    ratios = [p["login"][0] / p["healthz"][0] for p in pairs]
    print(f"{build}: login {med('login', 0):.0f} req/s, healthz {med('healthz', 0):.0f} req/s; login ÷ healthz per pair: median "
          f"{st.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); admin CPU per request: login "
          f"{med('login', 1):.1f} us, healthz {med('healthz', 1):.1f} us (ratio {med('healthz', 1) / med('login', 1):.2f})")
PY
