#!/bin/sh
# Fetch Fashion-MNIST, the main job's default data: Debian's package where apt is usable,
# otherwise mixkit downloads the official files (checked by SHA-256) on first use.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    echo "fetch-data: Fashion-MNIST found in $DIR"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
        || true
fi
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    echo "fetch-data: installed Debian package dataset-fashion-mnist"
else
    echo "fetch-data: apt not usable here; mixkit will download Fashion-MNIST into ~/.cache/mixkit on first use"
fi
