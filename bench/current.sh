#!/usr/bin/env bash
# The runs behind BENCHMARKS.md's current tables, in one go, each table's
# rows side by side in one run: every rung, WebTransport against WebSocket
# and both floors, the storage backends, raw quinn, the background
# articles' claims, idle memory and SSE over HTTP/1.1, HTTP/2 and HTTP/3.
# The peers' comparison is
# bench/compare.sh. Raw output goes to bench/results/current-<time>.txt.
#
#   bench/current.sh              # everything (≈ 12 minutes)
#   bench/current.sh rungs wt     # some sections only
#
# Sections: rungs wt backends quinn claims idle versions. PRIO (e.g. "chrt -f 5")
# runs the tool under a real-time priority, so that other work on a shared
# machine does not deschedule the server and the client mid-run (CPU
# figures are each process's own either way; latencies are not).
set -euo pipefail
cd "$(dirname "$0")/.."

SECTIONS=${*:-rungs wt backends quinn claims idle versions}
PRIO=${PRIO:-}
mkdir -p bench/results
OUT=bench/results/current-$(date -u +%Y%m%dT%H%M%SZ).txt
cargo build --release -p ladder -p ladder-bench
B="$PRIO target/release/ladder-bench"
S=(--server-bin target/release/ladder --server-cpu 0 --client-cpu 1)
P=(--server-cpu 0 --client-cpu 1)

{
  echo "# $(date -u) $(nproc) cpus, commit $(git rev-parse --short HEAD), load: $(cut -d' ' -f1-3 /proc/loadavg), prio: ${PRIO:-none}"
  for s in $SECTIONS; do
    echo "## $s $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    case $s in
      rungs)
        $B fanout "${S[@]}" --transport webtransport,webtransport-datagram,websocket,sse,longpoll,longpoll-reused,poll \
          --subs 1000 --rate 100 --count 1000 --poll-interval-ms 1000 --wt-endpoints 8
        $B fanout "${S[@]}" --transport webtransport,websocket,sse --subs 200 --rate 100 --count 2000 --wt-endpoints 4 ;;
      wt)
        $B fanout "${S[@]}" --transport webtransport,websocket --subs 1000 --rate 50 --count 500 --wt-endpoints 8 --label 50k
        $B floor "${P[@]}" --subs 1000 --rate 50 --count 500
        $B floor --quic "${P[@]}" --subs 1000 --rate 50 --count 500 --endpoints 8 ;;
      backends)
        $B backends ;;
      quinn)
        $B quinn "${S[@]}" ;;
      claims)
        for i in 250 500 1000 2000; do
          $B fanout "${S[@]}" --transport poll --subs 100 --rate 10 --count 100 --poll-interval-ms $i --label "poll-$i"
        done
        $B fanout "${S[@]}" --transport poll,longpoll,sse,websocket --subs 1000 --rate 0.2 --count 4 \
          --poll-interval-ms 2000 --label sparse
        $B fanout "${S[@]}" --transport webtransport-datagram,webtransport --subs 100 --rate 20 --count 400 --label dgram ;;
      idle)
        $B idle "${S[@]}" --transport websocket,sse,longpoll --subs 10000 --src-ips 4
        $B idle "${S[@]}" --transport webtransport --subs 5000 --wt-endpoints 8 ;;
      versions)
        $B sse-versions "${S[@]}" --subs 500 --rate 100 --count 500 --idle-subs 1000 --reps 2 ;;
      *) echo "unknown section $s" >&2; exit 2 ;;
    esac
  done
} 2>&1 | tee "$OUT"
echo "raw output: $OUT"
