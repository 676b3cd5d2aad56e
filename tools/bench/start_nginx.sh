#!/usr/bin/env bash
# Start nginx on 127.0.0.1 with fixed OpenAI-like bodies (tools/bench/nginx.conf) for the
# replay benchmark. Everything it writes stays under PREFIX (a temporary directory by default).
#   usage: tools/bench/start_nginx.sh [PORT] [PREFIX]      (PORT 0 or empty: pick a free one)
#   prints: PID URL PREFIX      stop with: kill PID
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:-0}"
prefix="${2:-$(mktemp -d /tmp/cpbench-nginx.XXXXXX)}"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "nginx not found; installing nginx-light with apt-get" >&2
    apt-get install -y nginx-light >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y nginx-light >/dev/null; }
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
if [ "$port" = "0" ]; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
mkdir -p "$prefix"
sed -e "s#@PREFIX@#$prefix#g" -e "s#@PORT@#$port#g" "$here/nginx.conf" > "$prefix/nginx.conf"
"$nginx_bin" -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
for _ in $(seq 100); do
    [ -s "$prefix/nginx.pid" ] && break
    sleep 0.05
done
echo "$(cat "$prefix/nginx.pid") http://127.0.0.1:$port $prefix"
