#!/usr/bin/env bash
# Create (or reuse) the git-ignored virtual environment .venv inside the repository, install
# microdit into it with its test extras, then run the given command inside it.
#   tools/env.sh COMMAND [ARGS...]
# Re-installs only when pyproject.toml or this script changed since the last install.
# pip installs without compiling bytecode (--no-compile: the ~18,000 modules of torch, transformers
# and the rest took half the install); the commands run here compile each module they import, once,
# into .venv/pycache (PYTHONPYCACHEPREFIX; PYTHONDONTWRITEBYTECODE is cleared for them, so a shell
# that sets it does not make every process compile its imports again; nothing lands in the repository).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"
# The torch pair the tests are run with; users may install any torch>=2.4 themselves (pyproject.toml).
torch_pins=(torch==2.14.1 torchvision==0.29.1)

stamp_of() { cat "$repo/pyproject.toml" "$repo/tools/env.sh" | sha256sum | cut -d' ' -f1; }
want="$(stamp_of)"
installed() { [ -x "$venv/bin/python" ] && [ "$want" = "$(cat "$venv/.microdit-install" 2>/dev/null || true)" ]; }

if ! installed; then
  mkdir -p "$venv"
  # Two commands started at once on a fresh clone (the README's two): one installs, the other
  # waits for it (flock, where the system has it) instead of installing into the same folder.
  if command -v flock > /dev/null; then
    exec 9> "$venv/.install-lock"
    flock -n 9 || { echo "[env] waiting for the other tools/env.sh that is installing into $venv" >&2; flock 9; }
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "[env] creating $venv" >&2
    rm -f "$venv/.microdit-install"
    "$python" -m venv "$venv"
  fi
  if ! installed; then  # the other command may have installed meanwhile
    log="$venv/install.log"
    echo "[env] installing microdit and its dependencies into $venv (first time: several minutes; log: $log)" >&2
    if ! { "$venv/bin/python" -m pip install --upgrade pip &&
           "$venv/bin/python" -m pip install --no-compile "${torch_pins[@]}" &&
           "$venv/bin/python" -m pip install --no-compile -e "$repo[dev]" "${torch_pins[@]}"; } > "$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "[env] installation failed; full log: $log" >&2
      exit 1
    fi
    echo "$want" > "$venv/.microdit-install"
  fi
  exec 9>&-  # the command does not hold the lock
fi
cd "$repo"
export PATH="$venv/bin:$PATH" PYTHONPYCACHEPREFIX="$venv/pycache"
unset PYTHONDONTWRITEBYTECODE
exec "$@"
