#!/usr/bin/env bash
# Chromium and its WebDriver, which the web page's test drives headless, installed from the system's packages
# when either is missing (Debian: chromium chromium-driver; Ubuntu: chromium-browser chromium-chromedriver).
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    command -v chromedriver >/dev/null && exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: the web page's test needs Chromium and chromedriver; install them with your package manager." >&2
    exit 1
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive
echo "installing Chromium and chromedriver (apt-get) for the web page's test..."
install() { $SUDO apt-get install -y -q "$@" >/dev/null; }
install chromium chromium-driver || install chromium-browser chromium-chromedriver \
    || { $SUDO apt-get update -q >/dev/null && { install chromium chromium-driver \
                                                  || install chromium-browser chromium-chromedriver; }; }
