#!/usr/bin/env bash
# Classify images (or camera frames) with this bundle's model: ./classify.sh photo.jpg [--json] [--camera]
# Run ./install.sh once first. All options: ./classify.sh --help
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${EDGESHIP_PI_VENV:-$DIR/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "classify.sh: no $VENV yet: run ./install.sh first" >&2
  exit 2
fi
PYTHONPATH="$DIR${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" "$DIR/classify.py" --bundle "$DIR" "$@"
