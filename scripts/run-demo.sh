#!/usr/bin/env bash
# `make run`: a coordinator on :8080 and a client that mounts a small sample bucket (the
# local provider) at /tmp/fuse-client. Ctrl-C uploads anything written, unmounts and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bucket=${TIERFS_DEMO_BUCKET:-/tmp/tierfs-demo/bucket}
mount=${TIERFS_DEMO_MOUNT:-/tmp/fuse-client}
nvme=${TIERFS_DEMO_NVME:-/tmp/nvme-cache}
port=${TIERFS_DEMO_COORDINATOR_PORT:-8080}

if [ ! -d "$bucket/datasets" ]; then
  echo "creating a sample dataset in $bucket"
  mkdir -p "$bucket/datasets/images" "$bucket/datasets/tables"
  echo "Sample dataset served by tierfs from $bucket" > "$bucket/README.txt"
  for i in $(seq -w 1 50); do
    head -c 262144 /dev/urandom > "$bucket/datasets/images/img-$i.bin"
  done
  seq 1 100000 | awk '{print $1","$1*$1","$1%7}' > "$bucket/datasets/tables/squares.csv"
  head -c 67108864 /dev/urandom > "$bucket/datasets/large-64MiB.bin"
fi
mkdir -p "$mount" 2>/dev/null || true   # a stale mount from a crash is cleaned by the client

# A port taken (another `make run`, another server) failed the coordinator alone: the demo
# went on, its node talking to whatever held the port.
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "make run: port $port is taken: by another \`make run\` (one at a time), or by" \
    "another server (TIERFS_DEMO_COORDINATOR_PORT=PORT make run takes another port)" >&2
  exit 1
fi

# In a session of its own, so that Ctrl-C reaches the client alone: it says goodbye to the
# coordinator, unmounts and exits, and then the coordinator is stopped.
setsid .venv/bin/tierfs coordinator -port "$port" -data-dir /tmp/tierfs-demo/coordinator &
coordinator=$!
trap 'kill -TERM $coordinator 2>/dev/null || true; wait $coordinator 2>/dev/null || true' EXIT
until .venv/bin/tierfs status -coordinator "localhost:$port" >/dev/null 2>&1; do
  if ! kill -0 "$coordinator" 2>/dev/null; then
    echo "make run: the coordinator did not start (its line above says why)" >&2
    exit 1
  fi
  sleep 0.2
done

cat <<MSG
tierfs is mounting $bucket at $mount (tier-1 cache in $nvme); the coordinator's dashboard
is at http://localhost:$port/. Try, in another terminal:
  ls -l $mount/datasets
  cat $mount/README.txt
  time cat $mount/datasets/large-64MiB.bin > /dev/null   # cold, then again: warm
  cp /etc/hostname $mount/hello.txt && ls -l $bucket     # written through to the bucket
  .venv/bin/tierfs warm $mount/datasets/images            # into tier 1 before it is read
  .venv/bin/tierfs status                                 # the cluster: peers and tiers
Ctrl-C here unmounts.
MSG
.venv/bin/tierfs client -mount "$mount" -nvme "$nvme" -coordinator "localhost:$port" \
  -cloud-provider local -local-root "$bucket" "$@"
