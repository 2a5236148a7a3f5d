#!/usr/bin/env bash
# Installs the real servers the tests start themselves (Debian packages).
# Skips what is already there; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
for pair in "redis-server:redis-server" "nginx:nginx" "chromium:chromium" "chromedriver:chromium-driver" \
            "pg_ctl:postgresql" "shellcheck:shellcheck"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/"$cmd" >/dev/null 2>&1; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing system packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
