# shellcheck shell=bash
# Sourced by scripts/test, scripts/demo and scripts/bench: the project's own .venv, created and
# kept in sync. Creates .venv (Python >= 3.11, from $PYTHON or python3) and reinstalls when
# pyproject.toml changes. Sets `repo` and `venv`; `bootstrap_venv <script name> [extra]` does the
# work, installing the project with that optional extra (default `dev`).

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"

python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

bootstrap_venv() {
  local who="$1" extra="${2:-dev}"
  if [[ ! -x "$venv/bin/python" ]]; then
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
      echo "$who: '$python' not found; install Python >= 3.11 or set PYTHON" >&2
      exit 1
    fi
    if ! python_ok "$python"; then
      echo "$who: need Python >= 3.11, but '$python' is $("$python" -V 2>&1);" \
        "set PYTHON to a newer interpreter" >&2
      exit 1
    fi
    "$python" -m venv "$venv"
  elif ! python_ok "$venv/bin/python"; then
    echo "$who: $venv has $("$venv/bin/python" -V 2>&1), need >= 3.11;" \
      "remove it and run again" >&2
    exit 1
  fi

  # One stamp per extra, so test and demo never reinstall after each other.
  local stamp="$venv/.pyproject-installed"
  if [[ "$extra" != dev ]]; then
    stamp+="-$extra"
  fi
  local pyproject_hash
  pyproject_hash="$("$venv/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
    "$repo/pyproject.toml")"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$pyproject_hash" ]]; then
    echo "$who: installing the project and its $extra dependencies into .venv" >&2
    (cd "$repo" && "$venv/bin/python" -m pip install --quiet -e ".[$extra]")
    echo "$pyproject_hash" >"$stamp"
  fi
}
