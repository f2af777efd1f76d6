# Sourced by bin/setup-venv and bin/lock: both must pick the same interpreter, so that the
# lock is resolved for the Python the venv is made with.
#
# The distribution's interpreter comes first: tasks run as an unprivileged user (tasks.run_as)
# and must be able to execute the venv's python, which is a symlink to the base interpreter;
# a pyenv or similar under root's home (mode 0700) is out of their reach.
pick_python() {
  local candidate
  for candidate in /usr/bin/python3.11 /usr/bin/python3.12 /usr/bin/python3.13 /usr/bin/python3; do
    if [[ -x "$candidate" ]] &&
       "$candidate" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      printf '%s\n' "$candidate"; return 0
    fi
  done
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}
