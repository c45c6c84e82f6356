#!/usr/bin/env bash
# Runs meterline and K (Kafka Streams) on the same pre-loaded input in a fresh
# namespace, one after the other, dumps both finance.postings topics and
# compares them with compare.py. Needs the local broker running
# (deploy/local/kafka start), the meterline release binary and the K jar:
#   CARGO_TARGET_DIR=/work/cargo-target cargo build --release
#   mvn -q -f benches/kstreams/pom.xml package -DskipTests
# Env: EVENTS (20000), CUSTOMERS (100), SPREAD_HOURS (72), LATE_FRACTION (0), SEED (7),
#      SUBSCRIPTIONS (benches/scenario/subscriptions.jsonl), OUT (/tmp/kcmp.<ns>),
#      ML (meterline binary), BOOTSTRAP (127.0.0.1:9092), K_ARGS (extra K options).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
EVENTS="${EVENTS:-20000}"
SPREAD_HOURS="${SPREAD_HOURS:-72}"
LATE_FRACTION="${LATE_FRACTION:-0}"
SEED="${SEED:-7}"
CUSTOMERS="${CUSTOMERS:-100}"
SUBSCRIPTIONS="${SUBSCRIPTIONS:-benches/scenario/subscriptions.jsonl}"
ML="${ML:-${CARGO_TARGET_DIR:-/work/cargo-target}/release/meterline}"
BOOTSTRAP="${BOOTSTRAP:-127.0.0.1:9092}"
JAR="$here/target/meterline-kstreams.jar"
stamp="$(date +%s)"
ns="kcmp.$stamp."
OUT="${OUT:-/tmp/kcmp.$stamp}"
mkdir -p "$OUT"
export METERLINE__KAFKA__BOOTSTRAP_SERVERS="$BOOTSTRAP"
export METERLINE__TOPOLOGY__NAMESPACE="$ns"
export METERLINE__TOPOLOGY__METERS_FILE="$repo/benches/scenario/meters.toml"
export METERLINE__RUNTIME__STATE_DIR="$OUT/meterline-state"
export METERLINE__HTTP__LISTEN_ADDR="${METERLINE__HTTP__LISTEN_ADDR:-127.0.0.1:19464}"
dump() { java -cp "$JAR" dev.meterline.kstreams.Dump --bootstrap "$BOOTSTRAP" --topic "$1" 2>/dev/null; }
count() { dump "$1" | wc -l; }

echo "== namespace $ns, output in $OUT"
"$ML" topology apply >/dev/null
"$ML" refdata load --kind customers --file benches/scenario/customers.jsonl
"$ML" refdata load --kind subscriptions --file "$SUBSCRIPTIONS"
"$ML" refdata load --kind plans --file benches/scenario/plans.jsonl
"$ML" loadgen --types api.request,llm.tokens --customers "$CUSTOMERS" --count "$EVENTS" --seed "$SEED" \
  --spread-hours "$SPREAD_HOURS" --late-fraction "$LATE_FRACTION"

# Waits until $1 (rated topic) holds $2 records and $3 (postings) stops growing; prints seconds.
wait_done() {
  local rated_topic=$1 want=$2 postings_topic=$3 t0=$4 prev=-1 n r
  for _ in $(seq 1 600); do
    sleep 2
    r=$(count "$rated_topic"); n=$(count "$postings_topic")
    if [ "$r" -ge "$want" ] && [ "$n" -gt 0 ] && [ "$n" = "$prev" ]; then break; fi
    prev=$n
  done
  echo "$(( $(date +%s) - t0 ))"
}

echo "== meterline run"
validated_want=""
t0=$(date +%s)
METERLINE_LOG=warn "$ML" run >"$OUT/meterline.log" 2>&1 &
mpid=$!
trap 'kill -TERM $mpid 2>/dev/null || true' EXIT
# validated count is only known once validate is done: wait for it to settle first
prev=-1
while :; do sleep 2; v=$(count "${ns}usage.validated"); [ "$v" -gt 0 ] && [ "$v" = "$prev" ] && break; prev=$v; done
validated_want=$v
ml_secs=$(wait_done "${ns}usage.rated" "$validated_want" "${ns}finance.postings" "$t0")
kill -TERM $mpid; wait $mpid || true
trap - EXIT
echo "meterline: done within ${ml_secs}s (2 s polling; includes start-up)"

echo "== K run"
t0=$(date +%s)
java -jar "$JAR" --bootstrap "$BOOTSTRAP" --namespace "$ns" --state-dir "$OUT/kstreams-state" ${K_ARGS:-} \
  >"$OUT/kstreams.log" 2>&1 &
kpid=$!
trap 'kill -TERM $kpid 2>/dev/null || true' EXIT
k_secs=$(wait_done "${ns}kstreams.usage.rated" "$validated_want" "${ns}kstreams.finance.postings" "$t0")
kill -TERM $kpid; wait $kpid || true
trap - EXIT
echo "K: done within ${k_secs}s (2 s polling; includes JVM start-up and global-store bootstrap)"

dump "${ns}finance.postings" >"$OUT/meterline-postings.tsv"
dump "${ns}kstreams.finance.postings" >"$OUT/kstreams-postings.tsv"
python3 "$here/compare.py" "$OUT/meterline-postings.tsv" "$OUT/kstreams-postings.tsv" --names meterline,kstreams
