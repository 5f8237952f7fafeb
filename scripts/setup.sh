#!/usr/bin/env bash
# Set up celery-chaos on a fresh Debian/Ubuntu machine: system packages when missing,
# a virtual env at .venv/, and `pip install -e .[dev]`. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Headless Chromium opens generated reports in the report tests (tests/test_report_browser.py).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Packet-level faults (network namespaces, docs/network.md): iptables rules, socat relays.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# The compose backend (docs/compose.md): a private Docker engine, docker-compose, and
# mmdebstrap to build images from Debian packages (no image registry is needed).
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
for pkg in ${EXTRA_APT_PACKAGES:-}; do need+=("$pkg"); done

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
      echo "setup: need root or sudo to install: ${need[*]}" >&2; exit 2; fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # The Debian package tries to start a system-wide node; the harness never uses it.
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Stop any system-wide broker the packages may have started: the harness runs private ones.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop rabbitmq-server redis-server >/dev/null 2>&1 || true
    # nor a system Docker daemon (it would create the docker0 bridge): the harness starts a
    # private one without a bridge when it needs one
    $SUDO systemctl stop docker.socket docker >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.celery-chaos-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: pip install -e .[dev]"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
