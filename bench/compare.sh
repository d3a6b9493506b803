#!/usr/bin/env bash
# One command, one run: the same WebSocket fan-out workload against
# Socket.IO 4.8, Node `ws` 8 and Ladder, each server pinned to one core and
# the load client to the other, then empty short-poll / long-poll requests
# per second against Ladder and a trivial Node `http` handler (wrk), and
# Ladder's WebTransport at the 50 000 deliveries/s load beside its
# WebSocket and the two floors of that load (TCP, raw quinn). Prints the
# comparison table with ratios; raw lines go to bench/results/.
#
#   bench/compare.sh                 # full size (≈ 4 minutes)
#   SUBS=200 IDLE=2000 bench/compare.sh   # quicker
#
# Needs: cargo, node + npm (the peers are installed from npm into
# bench/peers/node_modules by `npm ci`), taskset, and wrk (Debian package,
# installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-1000}            # WebSocket subscribers
IDLE=${IDLE:-10000}           # idle connections for KiB/conn
SAT_RATE=${SAT_RATE:-1000}    # saturation: msg/s offered × SUBS
SAT_COUNT=${SAT_COUNT:-5000}
MID_RATE=${MID_RATE:-50}      # 50 msg/s × 1000 subs = 50 000 deliveries/s
MID_COUNT=${MID_COUNT:-500}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WRK_SECS=${WRK_SECS:-5}

mkdir -p bench/results
OUT=bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ).txt

(cd bench/peers && npm ci --no-audit --no-fund --silent)
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi
cargo build --release -p ladder -p ladder-bench
B=target/release/ladder-bench
PIN=(--server-cpu "$SERVER_CPU" --client-cpu "$CLIENT_CPU")

{
  echo "# $(date -u) $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# commit $(git rev-parse --short HEAD) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  for peer in ladder ws socketio; do
    case $peer in
      ladder) SRV=(--server-bin target/release/ladder); T=websocket ;;
      ws) SRV=(--server-cmd "node bench/peers/ws-server.js" --peer ws); T=websocket ;;
      socketio) SRV=(--server-cmd "node bench/peers/sio-server.js" --peer socketio); T=socketio ;;
    esac
    "$B" fanout "${SRV[@]}" "${PIN[@]}" --transport "$T" --subs "$SUBS" \
      --rate "$SAT_RATE" --count "$SAT_COUNT" --label saturation --drain-s 10
    "$B" fanout "${SRV[@]}" "${PIN[@]}" --transport "$T" --subs "$SUBS" \
      --rate "$MID_RATE" --count "$MID_COUNT" --label 50k
    "$B" idle "${SRV[@]}" "${PIN[@]}" --transport "$T" --subs "$IDLE" --label idle \
      --src-ips 4
  done
  # WebTransport streams, same load as the WebSocket "50k" row above.
  "$B" fanout --server-bin target/release/ladder "${PIN[@]}" --transport webtransport \
    --subs "$SUBS" --rate "$MID_RATE" --count "$MID_COUNT" --label 50k-wt --wt-endpoints 8
  # The same load's floors: one send() per delivery over TCP, and raw quinn
  # (a 64-byte write per stream per message), what each Ladder rung is
  # measured against.
  "$B" floor "${PIN[@]}" --subs "$SUBS" --rate "$MID_RATE" --count "$MID_COUNT"
  "$B" floor --quic "${PIN[@]}" --subs "$SUBS" --rate "$MID_RATE" --count "$MID_COUNT"

  # Empty polls: Ladder vs node:http, wrk on the client core, 64 connections.
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  wrk_rps() { taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${WRK_SECS}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
  LP=$(port); QP=$(port)
  taskset -c "$SERVER_CPU" target/release/ladder --http 127.0.0.1:$LP --h3 127.0.0.1:$QP \
    --certs-dir "${TMPDIR:-/tmp}/ladder-compare-certs" --max-connections-per-ip 0 \
    --max-long-polls-per-ip 0 --publish-rate 0 >/dev/null 2>&1 &
  LPID=$!
  NP=$(port)
  PORT=$NP taskset -c "$SERVER_CPU" node bench/peers/http-server.js &
  NPID=$!
  trap 'kill $LPID $NPID 2>/dev/null || true' EXIT
  sleep 1
  curl -s -X POST "127.0.0.1:$LP/api/channels/full/messages" -d '"x"' >/dev/null
  echo "WRK poll-empty ladder $(wrk_rps "http://127.0.0.1:$LP/api/channels/empty/messages?since=0")"
  echo "WRK longpoll-ready ladder $(wrk_rps "http://127.0.0.1:$LP/api/channels/full/messages?since=0&wait=30")"
  echo "WRK http node $(wrk_rps "http://127.0.0.1:$NP/")"
  kill $LPID $NPID 2>/dev/null || true
  wait $LPID $NPID 2>/dev/null || true
} 2>&1 | tee "$OUT"

node bench/peers/summarize.js "$OUT"
