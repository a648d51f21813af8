#!/usr/bin/env bash
# The Debian packages the tests use, installed where missing: PostgreSQL's server (the tests start their own
# cluster) and promtool (lints the services' Prometheus expositions). Their daemons are kept from starting.
# Needs root and apt-get; elsewhere it says what to install and leaves the rest of set-up to go on.
set -uo pipefail
packages=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || packages+=(postgresql)
command -v promtool >/dev/null || packages+=(prometheus)
[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "the tests need Debian's ${packages[*]} (apt-get install ${packages[*]}); not installed: not root or no apt-get"
  exit 0
fi
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null) \
  || echo "could not install ${packages[*]}"
rm -f /usr/sbin/policy-rc.d
