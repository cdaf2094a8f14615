#!/usr/bin/env bash
# Set up this bundle on a Raspberry Pi (Raspberry Pi OS / Debian, 64-bit; any Linux with Python >= 3.10 works):
# apt packages, then a virtual environment in ./.venv with numpy, pillow and only the runtime(s) the manifest's
# artifacts need. Never installs torch.
#
#   ./install.sh                      # runtimes for every format in manifest.json
#   ./install.sh --runtime onnx       # only onnxruntime (repeat or comma-separate: --runtime tflite,onnx)
#   ./install.sh --camera             # also the camera libraries (python3-picamera2 / python3-opencv) via apt
#   ./install.sh --no-apt             # skip apt (or EDGESHIP_PI_NO_APT=1), e.g. without root or off Debian
#   ./install.sh --venv DIR --python python3.11
#
# Runtime versions default to the ones the export was verified with (manifest.json "tools"); override with
# EDGESHIP_PI_ONNXRUNTIME / EDGESHIP_PI_LITERT / EDGESHIP_PI_EXECUTORCH (a version, or "latest").
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${EDGESHIP_PI_VENV:-$DIR/.venv}"
PYTHON="${EDGESHIP_PI_PYTHON:-python3}"
NO_APT="${EDGESHIP_PI_NO_APT:-0}"
CAMERA=0
RUNTIMES=()

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --runtime) [[ $# -ge 2 ]] || die "--runtime needs a value (onnx, tflite, executorch)"
               IFS=',' read -r -a more <<< "$2"; RUNTIMES+=("${more[@]}"); shift 2 ;;
    --runtime=*) IFS=',' read -r -a more <<< "${1#*=}"; RUNTIMES+=("${more[@]}"); shift ;;
    --no-apt) NO_APT=1; shift ;;
    --camera) CAMERA=1; shift ;;
    --venv) [[ $# -ge 2 ]] || die "--venv needs a folder"; VENV="$2"; shift 2 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ -f "$DIR/manifest.json" ]] || die "no manifest.json beside install.sh: run it inside a bundle made by 'edgeship package --app pi'"

# --- system packages --------------------------------------------------------------------------------------------
if [[ "$NO_APT" != "1" ]]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    pkgs=(python3 python3-venv python3-pip)
    if [[ "$CAMERA" == "1" ]]; then
      apt-cache show python3-picamera2 >/dev/null 2>&1 && pkgs+=(python3-picamera2)
      pkgs+=(python3-opencv)
    fi
    say "apt-get install ${pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${pkgs[@]}"
  else
    say "no apt-get here; skipping system packages"
  fi
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (install Python 3.10+, or pass --python)"

# --- which runtimes: the formats in the manifest (or --runtime), with versions from manifest.tools -------------------
mapfile -t PLAN < <("$PYTHON" - "$DIR/manifest.json" "${RUNTIMES[@]+"${RUNTIMES[@]}"}" <<'PY'
import json, os, sys
manifest = json.load(open(sys.argv[1]))
major = str(manifest.get("schema_version", "0")).split(".")[0]
if not major.isdigit() or int(major) > 1:
    sys.exit(f"manifest.json has schema_version {manifest.get('schema_version')!r}; this install.sh knows 1.x")
alias = {"onnx": "onnx", "onnxruntime": "onnx", "ort": "onnx", "tflite": "tflite", "litert": "tflite",
         "executorch": "executorch", "pte": "executorch", "et": "executorch"}
have = [a["format"] for a in manifest["artifacts"]]
asked = sys.argv[2:]
bad = [r for r in asked if r.strip().lower() not in alias]
if bad:
    sys.exit(f"unknown runtime {', '.join(bad)}: use onnx, tflite or executorch")
wanted = [alias[r.strip().lower()] for r in asked] or [f for f in ("tflite", "onnx", "executorch") if f in have]
missing = [f for f in wanted if f not in have]
if missing:
    sys.exit(f"the bundle has no {', '.join(missing)} artifact (it has: {', '.join(sorted(set(have))) or 'none'})")
if not wanted:
    sys.exit("the bundle has no artifact a Pi can run (onnx, tflite or executorch)")
tools = manifest.get("tools") or {}
def pin(pkg, env):
    v = os.environ.get(env) or tools.get(pkg)
    return pkg if not v or v == "latest" else f"{pkg}=={v}"
spec = {"onnx": pin("onnxruntime", "EDGESHIP_PI_ONNXRUNTIME"), "tflite": pin("ai-edge-litert", "EDGESHIP_PI_LITERT"),
        "executorch": pin("executorch", "EDGESHIP_PI_EXECUTORCH")}
for f in dict.fromkeys(wanted):
    print(f"{f} {spec[f]}")
PY
)
[[ ${#PLAN[@]} -gt 0 ]] || die "cannot plan the install (see the message above)"

# --- the virtual environment --------------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  venv_args=()
  [[ "$CAMERA" == "1" ]] && venv_args+=(--system-site-packages)   # picamera2 / cv2 come from apt
  say "creating $VENV"
  "$PYTHON" -m venv "${venv_args[@]+"${venv_args[@]}"}" "$VENV" \
    || die "could not create a venv (on Debian: sudo apt-get install python3-venv)"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
say "pip install numpy pillow"
"${PIP[@]}" numpy pillow
for line in "${PLAN[@]}"; do
  fmt="${line%% *}"; req="${line#* }"
  say "pip install $req  (for $fmt)"
  if ! "${PIP[@]}" "$req"; then
    case "$fmt" in
      tflite) say "ai-edge-litert did not install; trying the legacy tflite-runtime (older op support: verify results)"
              "${PIP[@]}" tflite-runtime || die "neither ai-edge-litert nor tflite-runtime installs on this Python/CPU" ;;
      *) die "could not install $req" ;;
    esac
  fi
done

# --- check the artifacts arrived intact and that a runtime loads -----------------------------------------------------
"$VENV/bin/python" "$DIR/classify.py" --bundle "$DIR" --verify || die "an artifact is damaged: copy the bundle again"
model="$("$VENV/bin/python" "$DIR/classify.py" --bundle "$DIR" --print-model)" || die "no installed runtime can run this bundle"
say "ready: ./classify.sh IMAGE.jpg   (default model: $model)"
