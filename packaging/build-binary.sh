#!/usr/bin/env bash
# Builds dist/cnet-agent: the agent as one self-contained executable (PyInstaller one-file).
#
#   packaging/build-binary.sh            # -> dist/cnet-agent
#
# It makes its own build venv (build/venv) holding only the agent's runtime dependencies and
# PyInstaller (the `build` extra of pyproject.toml), at the versions pinned in constraints.txt
# (the lock, as for bin/setup-venv), so nothing from a development venv
# (TensorFlow, scikit-learn) can leak into the binary; numpy is a runtime dependency (the V2
# binary tensor codec) and goes in. Everything it writes or caches
# stays in the checkout: build/ (venv, pip cache, PyInstaller's cache and work dir) and dist/.
# A second build with unchanged inputs reuses the venv and takes well under a minute.
#
# Environment:
#   PYTHON=/path/to/python3.11   interpreter for the build venv (default: the first Python
#                                >= 3.11 on PATH with a shared libpython, which PyInstaller needs)
#   CNET_BUILD_STRIP=0           keep the symbols of bundled libraries (default: stripped, all
#                                but the wheels' vendored *.libs/, see the spec)
#   DIST=dir                     where cnet-agent is written (default: dist/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
venv="$build/venv"
dist="${DIST:-$root/dist}"
say() { printf 'build-binary: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usable_python() { # >= 3.11 and built with a shared libpython
  "$1" -c 'import sys, sysconfig; sys.exit(0 if sys.version_info >= (3, 11) and sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)' 2>/dev/null
}
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    usable_python "$PYTHON" || die "PYTHON=$PYTHON is not Python >= 3.11 built with --enable-shared"
    command -v "$PYTHON"; return
  fi
  local candidate
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && usable_python "$candidate"; then
      command -v "$candidate"; return
    fi
  done
  die "needs Python >= 3.11 with a shared libpython on PATH (Debian: python3.11 + libpython3.11)"
}

mkdir -p "$build"
exec 9>"$build/.build-binary.lock"
flock 9

# Keep every cache inside build/: pip's, PyInstaller's (bootloader and binary-dependency cache).
export PIP_CACHE_DIR="$build/pip-cache"
export PYINSTALLER_CONFIG_DIR="$build/pyinstaller-config"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Reproducible-ish: fixed hash seed and timestamps taken from the last commit.
export PYTHONHASHSEED=0
SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1700000000)"
export SOURCE_DATE_EPOCH

# The requirements: the agent's runtime dependencies + the build extra, read from pyproject.
requirements="$build/requirements.txt"
"$(pick_python)" - "$root/pyproject.toml" > "$requirements.new" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"] + project["optional-dependencies"]["build"]:
    print(req)
EOF
mv "$requirements.new" "$requirements"
lock="$root/constraints.txt"
stamp="$venv/.cnet-build-installed"
want="$(cat "$requirements" "$lock" | sha256sum | cut -c1-16)"
if [[ ! -x "$venv/bin/python" ]] || ! usable_python "$venv/bin/python"; then
  py="$(pick_python)"
  say "creating the build venv $venv with $("$py" --version)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  say "installing the runtime dependencies and PyInstaller into the build venv"
  "$venv/bin/python" -m pip install -q -c "$lock" --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -c "$lock" -r "$requirements" >&2
  printf '%s\n' "$want" > "$stamp"
fi

say "building $dist/cnet-agent"
start=$SECONDS
(cd "$root" && "$venv/bin/python" -m PyInstaller --noconfirm --log-level WARN \
  --distpath "$build/pyinstaller-dist" --workpath "$build/pyinstaller" "$root/packaging/cnet-agent.spec") >&2
[[ -x "$build/pyinstaller-dist/cnet-agent" ]] || die "PyInstaller did not produce $build/pyinstaller-dist/cnet-agent"
# Into place atomically: an agent running from the old binary keeps running undisturbed.
mkdir -p "$dist"
binary="$dist/cnet-agent"
cp "$build/pyinstaller-dist/cnet-agent" "$binary.tmp.$$"
mv -f "$binary.tmp.$$" "$binary"
version="$("$binary" --version)" || die "$binary --version failed"
say "built $binary ($version, $(du -h "$binary" | cut -f1), $((SECONDS - start))s)"
