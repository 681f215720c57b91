# Functions scripts/test and scripts/bench share: installing what is missing and starting
# the services (brokers, the venv's SecantusDB, Chromium) the tests and benchmarks use, each
# idempotent. Sourced, never run: it defines functions and settings and does nothing else.
# Needs $HOME, and $KOMBU_PYTHON (the venv's interpreter) before ensure_mongodb.

step() { printf '\n==> %s\n' "$*"; }

# --- toolchain -------------------------------------------------------------------------------
ensure_toolchain() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust (rustup) first" >&2
    exit 1
  fi
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing rustfmt and clippy"
    rustup component add rustfmt clippy
  fi
}

# --- system packages (C libraries the crates link) ---------------------------------------------
ensure_system_packages() {
  local missing=()
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} (apt-get)"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
}


# --- brokers the tests use ----------------------------------------------------------------------
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    step "installing redis-server (apt-get)"
    apt-get update -qq && apt-get install -y -qq redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    step "starting Redis on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
}
# A second Redis speaking only TLS on 127.0.0.1:6380, with a certificate from a test CA made
# here (the CA the tests trust: $KOMBU_TEST_REDIS_TLS_CA).
ensure_redis_tls() {
  local dir=$HOME/.cache/kombu-rs/tls
  mkdir -p "$dir"
  if [ ! -s "$dir/ca.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    # A CA, and a server certificate for 127.0.0.1 signed by it (TLS clients refuse a CA
    # certificate presented as the server's own).
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=kombu-rs test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
      -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$dir/server-key.pem" -out "$dir/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
      -CAcreateserial -days 365 -extfile "$dir/ext.cnf" -out "$dir/server.pem" >/dev/null 2>&1
    # A server started with older files would present them: restart it.
    redis-cli -p 6380 --tls --insecure shutdown nosave >/dev/null 2>&1 || true
  fi
  if ! redis-cli -p 6380 --tls --cacert "$dir/ca.pem" ping >/dev/null 2>&1; then
    step "starting Redis with TLS on 127.0.0.1:6380"
    redis-server --daemonize yes --bind 127.0.0.1 --port 0 --tls-port 6380 \
      --tls-cert-file "$dir/server.pem" --tls-key-file "$dir/server-key.pem" \
      --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients optional \
      --save "" --appendonly no --dir "$dir" --logfile "$dir/redis-tls.log"
    for _ in $(seq 1 50); do
      redis-cli -p 6380 --tls --cacert "$dir/ca.pem" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  redis-cli -p 6380 --tls --cacert "$dir/ca.pem" ping >/dev/null
  export KOMBU_TEST_REDIS_TLS_CA="$dir/ca.pem"
}

# A Redis listening only on a Unix socket, for the redis+socket:// and unix:// URLs
# ($KOMBU_TEST_REDIS_SOCKET).
ensure_redis_socket() {
  local dir=$HOME/.cache/kombu-rs/socket
  local sock=$dir/redis.sock
  mkdir -p "$dir"
  if ! redis-cli -s "$sock" ping >/dev/null 2>&1; then
    step "starting Redis on the Unix socket $sock"
    redis-server --daemonize yes --port 0 --unixsocket "$sock" --unixsocketperm 700 \
      --save "" --appendonly no --dir "$dir" --logfile "$dir/redis-socket.log"
    for _ in $(seq 1 50); do
      redis-cli -s "$sock" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  redis-cli -s "$sock" ping >/dev/null
  export KOMBU_TEST_REDIS_SOCKET="$sock"
}

# A Redis Sentinel on 127.0.0.1:26379 watching the 6379 server as master "kombu-test".
ensure_redis_sentinel() {
  local dir=$HOME/.cache/kombu-rs/sentinel
  if ! redis-cli -p 26379 sentinel get-master-addr-by-name kombu-test 2>/dev/null | grep -q 6379; then
    step "starting Redis Sentinel on 127.0.0.1:26379"
    mkdir -p "$dir"
    # Sentinel rewrites its configuration file, so it gets a fresh one of its own.
    cat >"$dir/sentinel.conf" <<CONF
port 26379
bind 127.0.0.1
daemonize yes
logfile $dir/sentinel.log
dir $dir
sentinel monitor kombu-test 127.0.0.1 6379 1
CONF
    redis-server "$dir/sentinel.conf" --sentinel
    for _ in $(seq 1 50); do
      redis-cli -p 26379 sentinel get-master-addr-by-name kombu-test 2>/dev/null | grep -q 6379 && break
      sleep 0.1
    done
  fi
  redis-cli -p 26379 sentinel get-master-addr-by-name kombu-test | grep -q 6379
}

# Starts the RabbitMQ node in the background and waits until it answers and has started
# (`rabbitmq-server -detached` returns before the node can be reached).
start_rabbitmq_node() {
  # Settings of the management plugin without the plugin stop the node from booting.
  if grep -q '^management\.' /etc/rabbitmq/rabbitmq.conf 2>/dev/null; then
    rabbitmq-plugins -q --offline enable rabbitmq_management >/dev/null 2>&1 || true
  fi
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached
  for _ in $(seq 1 300); do
    rabbitmqctl -q ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
}

# RabbitMQ on 127.0.0.1:5672 (guest/guest): installed when missing, started when down, and
# waited for until it accepts connections.
ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    step "installing rabbitmq-server (apt-get)"
    apt-get update -qq && apt-get install -y -qq rabbitmq-server
  fi
  if ! rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
    if rabbitmqctl -q ping >/dev/null 2>&1; then
      # The node runs but its app was stopped (an interrupted restart test): start the app.
      step "starting the RabbitMQ app"
      rabbitmqctl -q start_app >/dev/null
    else
      step "starting RabbitMQ on 127.0.0.1:5672"
      start_rabbitmq_node
    fi
    rabbitmqctl -q await_startup --timeout 120 >/dev/null
  fi
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0
    sleep 0.2
  done
  echo "RabbitMQ does not accept connections on 127.0.0.1:5672" >&2
  return 1
}

# A TLS listener of the same RabbitMQ on 127.0.0.1:5671, with a server certificate from the
# test CA of ensure_redis_tls ($KOMBU_TEST_AMQP_TLS_CA); client certificates are optional and,
# when presented, verified against that CA. Configured once (rabbitmq.conf), and again when the
# certificate changes; either way the broker restarts to read it.
ensure_rabbitmq_tls() {
  local src=$HOME/.cache/kombu-rs/tls dst=/etc/rabbitmq/tls conf=/etc/rabbitmq/rabbitmq.conf
  local restart=0
  mkdir -p "$dst"
  for f in ca.pem server.pem server-key.pem; do
    if ! cmp -s "$src/$f" "$dst/$f"; then
      install -m 640 -o rabbitmq -g rabbitmq "$src/$f" "$dst/$f"
      restart=1
    fi
  done
  if ! grep -q '^listeners.ssl.default' "$conf" 2>/dev/null; then
    cat >>"$conf" <<CONF
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $dst/ca.pem
ssl_options.certfile = $dst/server.pem
ssl_options.keyfile = $dst/server-key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
    restart=1
  fi
  # Client certificates are verified against the test CA when presented (optional).
  if grep -q '^ssl_options.verify = verify_none' "$conf"; then
    sed -i 's/^ssl_options.verify = verify_none/ssl_options.verify = verify_peer/' "$conf"
    restart=1
  fi
  if [ "$restart" = 1 ] || ! (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null; then
    step "restarting RabbitMQ with its TLS listener on 127.0.0.1:5671"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      rabbitmqctl -q ping >/dev/null 2>&1 || break
      sleep 0.2
    done
    start_rabbitmq_node
  fi
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null && break
    sleep 0.2
  done
  (exec 3<>/dev/tcp/127.0.0.1/5671) 2>/dev/null || {
    echo "RabbitMQ does not accept TLS connections on 127.0.0.1:5671" >&2
    return 1
  }
  export KOMBU_TEST_AMQP_TLS_CA="$src/ca.pem"
}

# --- the fault tests' tools: ip and ss (iproute2), nft (nftables), kill (procps) -------------------
# The restart and partition tests (kombu-test-support's faults module) run brokers of their own
# (Redis on 16380-16389, a RabbitMQ node on 5682/25682) and cut links inside network namespaces
# of their own; they need root. Namespaces an interrupted run left behind are deleted here.
ensure_fault_tools() {
  local missing=()
  command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  command -v kill >/dev/null 2>&1 || missing+=(procps)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} (apt-get, for the fault tests)"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '/^kombu-fault-/ {print $1}'); do
    pid=${ns#kombu-fault-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null; then
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

# --- the monitor's browser tests: Debian's Chromium and ChromeDriver -----------------------------
# monitor/tests/browser.rs drives the page in headless Chromium through ChromeDriver (WebDriver);
# its screenshots land in target/browser-screenshots/.
ensure_browser() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} (apt-get, for the browser tests)"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
}

# A fresh SecantusDB (a Python server speaking MongoDB's wire protocol, from the venv: the
# secantusdb package) on 127.0.0.1:27018 for this run only ($KOMBU_TEST_MONGODB_URL): its data
# in a new temporary directory, stopped and removed when this script exits (stop_mongodb, a trap
# on EXIT), pass or fail. A server an interrupted run left on the port is killed first (its pid
# is kept in ~/.cache/kombu-rs/mongodb/). It advertises itself as a single-node replica set, so
# change streams work. A KOMBU_TEST_MONGODB_URL already set names a server to use instead:
# then nothing is started.
mongodb_port=27018
mongodb_pidfile=$HOME/.cache/kombu-rs/mongodb/secantusd-$mongodb_port.pid
mongodb_pid=
mongodb_dir=

# Whether process $1 is a secantusd serving port $mongodb_port (its command line says so).
is_our_secantusd() {
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *secantusd* && $cmdline == *"--port $mongodb_port "* ]]
}

# Stops process $1 (SIGTERM, then SIGKILL after 5 s) and waits until it is gone.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
}

# Pings the server with the venv's pymongo (true when it answers).
mongodb_ping() {
  "$KOMBU_PYTHON" - "$1" >/dev/null 2>&1 <<'PY'
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=500, connectTimeoutMS=500)
client.admin.command("ping")
PY
}

stop_mongodb() {
  if [ -n "$mongodb_pid" ]; then
    stop_pid "$mongodb_pid"
    rm -f "$mongodb_pidfile"
    mongodb_pid=
  fi
  if [ -n "$mongodb_dir" ]; then
    rm -rf "$mongodb_dir"
    mongodb_dir=
  fi
}

ensure_mongodb() {
  if [ -n "${KOMBU_TEST_MONGODB_URL:-}" ]; then
    echo "mongodb: $KOMBU_TEST_MONGODB_URL (from the environment; nothing started)"
    return 0
  fi
  local server url pid
  server=$(dirname "$KOMBU_PYTHON")/secantusd-py
  url=mongodb://127.0.0.1:$mongodb_port
  if [ ! -x "$server" ]; then
    echo "no SecantusDB server at $server (scripts/python-env installs the secantusdb package)" >&2
    return 1
  fi
  mkdir -p "$(dirname "$mongodb_pidfile")"
  # A server an earlier run left behind (killed before its trap ran).
  pid=$(cat "$mongodb_pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && is_our_secantusd "$pid"; then
    step "stopping the SecantusDB an earlier run left on 127.0.0.1:$mongodb_port (pid $pid)"
    stop_pid "$pid"
  fi
  rm -f "$mongodb_pidfile"
  # One whose pidfile is gone: whoever listens on the port, when it is a secantusd.
  for pid in $(ss -Hltnp "sport = :$mongodb_port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    if is_our_secantusd "$pid"; then
      step "stopping a SecantusDB left on 127.0.0.1:$mongodb_port (pid $pid, no pidfile)"
      stop_pid "$pid"
    fi
  done
  if (exec 3<>"/dev/tcp/127.0.0.1/$mongodb_port") 2>/dev/null; then
    echo "127.0.0.1:$mongodb_port is taken by something that is not a SecantusDB of an earlier run:" >&2
    ss -ltnp "sport = :$mongodb_port" >&2 || true
    return 1
  fi

  step "starting SecantusDB on 127.0.0.1:$mongodb_port"
  mongodb_dir=$(mktemp -d -t kombu-rs-mongodb.XXXXXX)
  trap stop_mongodb EXIT
  # An empty configuration file of its own: no secantusd.toml found in the working or the home
  # directory (which the server otherwise looks for) applies.
  : >"$mongodb_dir/secantusd.toml"
  "$server" --host 127.0.0.1 --port "$mongodb_port" --storage-path "$mongodb_dir/data" \
    --config "$mongodb_dir/secantusd.toml" </dev/null >"$mongodb_dir/secantusd.log" 2>&1 &
  mongodb_pid=$!
  echo "$mongodb_pid" >"$mongodb_pidfile"
  local deadline=$((SECONDS + 30))
  until mongodb_ping "$url"; do
    if ! kill -0 "$mongodb_pid" 2>/dev/null; then
      echo "SecantusDB exited while starting; its log:" >&2
      cat "$mongodb_dir/secantusd.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "SecantusDB did not answer a ping on 127.0.0.1:$mongodb_port within 30 s; its log:" >&2
      cat "$mongodb_dir/secantusd.log" >&2
      return 1
    fi
    sleep 0.2
  done
  export KOMBU_TEST_MONGODB_URL=$url
}

# RabbitMQ's management plugin (its HTTP API on 127.0.0.1:15672, read by the monitor's
# broker page). The first time: the plugin enabled offline and its loopback-only settings
# written, then one restart, so it never listens beyond loopback. Later: enabled online if it
# was disabled (its settings are there), then waited for.
ensure_rabbitmq_management() {
  local conf=/etc/rabbitmq/rabbitmq.conf
  if ! grep -q '^management.tcp.ip' "$conf" 2>/dev/null; then
    step "enabling RabbitMQ's management API on 127.0.0.1:15672 (restarts RabbitMQ)"
    rabbitmq-plugins -q --offline enable rabbitmq_management >/dev/null
    printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = 15672\n' >>"$conf"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      rabbitmqctl -q ping >/dev/null 2>&1 || break
      sleep 0.2
    done
    start_rabbitmq_node
  elif ! rabbitmq-plugins -q list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
    step "enabling RabbitMQ's management plugin"
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null
  fi
  for _ in $(seq 1 150); do
    (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null && return 0
    sleep 0.2
  done
  echo "RabbitMQ's management API does not answer on 127.0.0.1:15672" >&2
  return 1
}
