# shellcheck shell=bash
# Sourced by scripts/test, scripts/demo and scripts/bench: the project's own .venv, created and
# kept in sync with requirements/dev.lock (pinned, hashed; scripts/lock makes it from
# pyproject.toml). Sets `repo` and `venv` ($GATEWAY_VENV, else .venv);
# `bootstrap_venv <script name> [extra]` does the work. Every extra a script may ask for (test,
# bench, docs, dev) is in the dev lock, so they all share one install.
# Needs Python >= 3.11 and pip: no locking tool. The interpreter is $PYTHON, else the
# distribution's /usr/bin/python3 when it is new enough and can make a venv, else python3 from
# PATH: distributions build CPython with profile-guided and link-time optimisation, a default
# pyenv or source build does neither, and the gateway then takes about 13% more CPU per request
# (docs/PERFORMANCE.md). The container's python image is built with both.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GATEWAY_VENV:-$repo/.venv}"

python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

default_python() {
  local system=/usr/bin/python3
  if [[ -x "$system" ]] && python_ok "$system" \
    && "$system" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "$system"
  else
    echo python3
  fi
}

bootstrap_venv() {
  local who="$1" extra="${2:-dev}" lock="$repo/requirements/dev.lock"
  if [[ ! -x "$venv/bin/python" ]]; then
    local python="${PYTHON:-$(default_python)}"
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

  # Cheap, every run: a lock that no longer serves pyproject.toml stops us with what to do.
  if ! "$venv/bin/python" "$repo/scripts/lockfile.py" check "$lock" "$extra" >&2; then
    echo "$who: the lock is out of date" >&2
    exit 1
  fi

  # Reinstall when the lock or the project's own metadata (entry points, version) changes.
  local stamp="$venv/.lock-installed" digest
  digest="$("$venv/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(b"".join(open(p, "rb").read() for p in sys.argv[1:])).hexdigest())' \
    "$repo/pyproject.toml" "$lock")"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]]; then
    echo "$who: installing requirements/dev.lock and the project into $(basename "$venv")" >&2
    local pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    # --no-deps: the lock is the whole set; `pip check` below proves it is complete.
    "${pip[@]}" install --quiet --require-hashes --no-deps -r "$lock"
    (cd "$repo" && "${pip[@]}" install --quiet --no-deps -e .)
    if ! "${pip[@]}" check >&2; then
      echo "$who: the installed set is inconsistent; run scripts/lock" >&2
      exit 1
    fi
    echo "$digest" >"$stamp"
  fi
}
