#!/usr/bin/env bash
# Installs the Debian packages tierfs needs (FUSE 3 to mount, its headers to build pyfuse3,
# Node for the Azure test server, rsync and git for the mount tests), and any named as arguments
# (`make bench`: the rivals rclone and s3fs), when they are missing. Idempotent; needs root.
set -euo pipefail
packages=(fuse3 libfuse3-dev pkg-config gcc nodejs npm rsync git "$@")
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    case "$package" in
      nodejs|npm) command -v "${package/nodejs/node}" >/dev/null || missing+=("$package") ;;
      gcc) command -v gcc >/dev/null || missing+=("$package") ;;
      *) missing+=("$package") ;;
    esac
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
