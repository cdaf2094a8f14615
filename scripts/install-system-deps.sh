#!/usr/bin/env bash
# Install the system tools the device tests drive for real: OpenSSH (server + client) for the
# ssh:// path and the adb client for the Android path. Idempotent: exits 0 at once when every
# tool is already there (kotlin + junit4 compile and test android-demo's core); otherwise runs `apt-get update` once and installs what is missing.
# CI runs this, then sets EDGESHIP_REQUIRE_SYSTEM_TOOLS=1 so the tests fail instead of skipping.
set -euo pipefail

# binary -> Debian package
declare -A PKG=(
  [/usr/sbin/sshd]=openssh-server
  [ssh]=openssh-client
  [scp]=openssh-client
  [ssh-keygen]=openssh-client
  [adb]=adb
  [kotlinc]=kotlin                      # compiles and tests android-demo's pure-Kotlin core
  [/usr/share/java/junit4.jar]=junit4
  [chromium]=chromium                   # --device browser: headless Chromium runs web-demo/ (tests/web)
  [npm]=npm                             # make web-setup: npm ci in web-demo/ (onnxruntime-web, LiteRT.js)
)

missing=()
for bin in "${!PKG[@]}"; do
  if [[ "$bin" == /* ]]; then
    [[ -e "$bin" ]] || missing+=("${PKG[$bin]}")
  else
    command -v "$bin" >/dev/null 2>&1 || missing+=("${PKG[$bin]}")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-system-deps: openssh-server, openssh-client, adb, kotlin, junit4, chromium and npm are already installed"
  exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-system-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi

# de-duplicate the package list
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-system-deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${pkgs[@]}"
# sshd wants its privilege-separation directory; create it so a loopback sshd can start.
$SUDO mkdir -p /run/sshd
echo "install-system-deps: done"
