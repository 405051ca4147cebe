#!/usr/bin/env bash
# Debian's Chromium and chromedriver, for the browser test in tests/test_demo.py (demo.py's page).
# Idempotent: returns at once when both are installed. Needs root (CI and the project's machines run as root).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium chromium-driver
