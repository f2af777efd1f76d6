#!/usr/bin/env bash
# Installs the CNET Agent as a systemd service, or removes it. Run as root.
#
#   packaging/install.sh                 install (or upgrade) and start cnet-agent
#   packaging/install.sh --no-start      install and enable, but do not start it now
#   packaging/install.sh --uninstall     stop, disable and remove the binary and the units;
#                                        /etc/cnet (config and token) and /var/lib/cnet are kept
#   packaging/install.sh --uninstall --purge   ... and remove /etc/cnet and /var/lib/cnet too
#
# What goes where:
#   <prefix>/bin/cnet-agent                   the binary (prefix: /usr/local)
#   /etc/systemd/system/cnet-agent.service    the service (its ExecStart names the two paths
#   /etc/systemd/system/cnet.slice            around it); the slice capping all models
#   /etc/cnet/config.yaml                     default config, only if there is none yet
#   /etc/cnet/token                           a random API token (0600 root), made when the
#                                             config sets none; the config then names it in
#                                             auth.token_file (appended to the config)
#   /var/lib/cnet                             the state; created by systemd (StateDirectory)
# Then `systemctl daemon-reload` and `systemctl enable --now cnet-agent`. Running it again is
# harmless: unchanged files are left alone, a running agent is restarted only when its
# binary or units changed, and running models keep running across that restart.
#
# Options:
#   --binary PATH       the cnet-agent binary (default: dist/cnet-agent of this checkout,
#                       or cnet-agent beside this script)
#   --prefix DIR        install the binary to DIR/bin (default /usr/local)
#   --unit-dir DIR      where the units go (default /etc/systemd/system)
#   --config-dir DIR    where config.yaml goes (default /etc/cnet)
#   --no-start          do not start (or restart) the service
#   --uninstall         remove instead of install; --purge: also the config (token included)
#                       and the state
# Environment:
#   DESTDIR=/stage      stage the files under /stage only (packaging, tests): no systemctl,
#                       no root needed
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/usr/local
unit_dir=/etc/systemd/system
config_dir=/etc/cnet
state_dir=/var/lib/cnet
binary=""
start=1
uninstall=0
purge=0
destdir="${DESTDIR:-}"
destdir="${destdir%/}"
service=cnet-agent.service

say() { printf 'cnet install: %s\n' "$*"; }
die() { printf 'cnet install: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) [[ $# -ge 2 ]] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --binary=*) binary="${1#*=}"; shift ;;
    --prefix) [[ $# -ge 2 ]] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --unit-dir) [[ $# -ge 2 ]] || die "--unit-dir needs a directory"; unit_dir="$2"; shift 2 ;;
    --unit-dir=*) unit_dir="${1#*=}"; shift ;;
    --config-dir) [[ $# -ge 2 ]] || die "--config-dir needs a directory"; config_dir="$2"; shift 2 ;;
    --config-dir=*) config_dir="${1#*=}"; shift ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (try --help)" ;;
  esac
done
[[ $purge -eq 0 || $uninstall -eq 1 ]] || die "--purge goes with --uninstall"
for dir in "$prefix" "$unit_dir" "$config_dir"; do
  [[ "$dir" == /* ]] || die "$dir: give an absolute path"
done
prefix="${prefix%/}"
bin_path="$prefix/bin/cnet-agent"
config_path="$config_dir/config.yaml"
token_path="$config_dir/token"

# systemctl is used only for a real install: as root, with systemd running, no DESTDIR.
use_systemctl=0
if [[ -z "$destdir" ]]; then
  [[ $EUID -eq 0 ]] || die "run as root (or set DESTDIR=/some/dir to only stage the files)"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    use_systemctl=1
  else
    say "systemd is not running on this machine: files only, the service is not enabled or started"
  fi
else
  say "staging under DESTDIR=$destdir (no systemctl)"
fi

changed=0
# put SRC DEST MODE: install SRC as DEST atomically (a running binary can be replaced),
# leaving an identical file alone.
put() {
  local src="$1" dest="$destdir$2" mode="$3"
  if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    say "unchanged $2"
    return
  fi
  mkdir -p "$(dirname "$dest")"
  local tmp; tmp="$(mktemp "$(dirname "$dest")/.cnet-install.XXXXXX")"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  changed=1
  say "installed $2"
}

remove() {
  local path="$destdir$1"
  if [[ -e "$path" || -L "$path" ]]; then
    rm -rf -- "$path"
    say "removed $1"
  fi
}

running_scopes() {
  systemctl list-units --plain --no-legend --state=active 'cnet-*.scope' 2>/dev/null | awk '{print $1}'
}

if [[ $uninstall -eq 1 ]]; then
  if [[ $use_systemctl -eq 1 ]]; then
    if systemctl is-enabled --quiet "$service" 2>/dev/null || systemctl is-active --quiet "$service" 2>/dev/null; then
      say "stopping and disabling $service"
      systemctl disable --now "$service" >/dev/null 2>&1 || systemctl stop "$service" || true
    fi
    scopes="$(running_scopes)"
    if [[ -n "$scopes" ]]; then
      say "still running (models keep running after the agent stops): $(echo $scopes)"
      say "stop them with: systemctl stop 'cnet-*.scope'"
    fi
  fi
  remove "$bin_path"
  remove "$unit_dir/$service"
  remove "$unit_dir/cnet.slice"
  if [[ $purge -eq 1 ]]; then
    remove "$config_dir"
    remove "$state_dir"
  else
    [[ -e "$destdir$config_path" ]] && say "kept $config_path (remove it, or use --purge)"
    [[ -e "$destdir$token_path" ]] && say "kept the API token $token_path (remove it, or use --purge)"
    [[ -e "$destdir$state_dir" ]] && say "kept the state in $state_dir (remove it, or use --purge)"
  fi
  [[ $use_systemctl -eq 1 ]] && systemctl daemon-reload
  say "uninstalled"
  exit 0
fi

# --- install --------------------------------------------------------------------------
if [[ -z "$binary" ]]; then
  for candidate in "$here/../dist/cnet-agent" "$here/cnet-agent"; do
    if [[ -x "$candidate" ]]; then binary="$candidate"; break; fi
  done
  [[ -n "$binary" ]] || die "no cnet-agent binary: build it with packaging/build-binary.sh, or pass --binary PATH"
fi
[[ -f "$binary" && -x "$binary" ]] || die "$binary: not an executable file"
for unit in "$service" cnet.slice; do
  [[ -f "$here/systemd/$unit" ]] || die "$here/systemd/$unit is missing"
done
version="$("$binary" --version 2>&1)" || die "$binary --version failed: $version"
say "installing $version"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

put "$binary" "$bin_path" 0755

# The unit names the binary and the config; rewrite its ExecStart for other paths.
sed -e "s|^ExecStart=.*|ExecStart=$bin_path -config $config_path|" "$here/systemd/$service" > "$work/$service"
put "$work/$service" "$unit_dir/$service" 0644
put "$here/systemd/cnet.slice" "$unit_dir/cnet.slice" 0644

if [[ -e "$destdir$config_path" ]]; then
  say "kept the existing $config_path"
else
  mkdir -p "$destdir$config_dir"
  chmod 0750 "$destdir$config_dir"
  put "$here/config.yaml" "$config_path" 0640
fi
if ! check="$("$destdir$bin_path" check-config -config "$destdir$config_path" 2>&1 >/dev/null)"; then
  die "$config_path is not valid, fix it and run this again: $check"
fi
[[ -n "$check" ]] && say "config: $check"

# An API token, unless the config sets one: without it every local user could drive an
# agent that runs as root. Made here, on the machine, never in a staged package.
config_sets_token() {
  env -u CNET_AUTH_TOKEN "$destdir$bin_path" check-config -config "$destdir$config_path" 2>/dev/null |
    grep -q '"tokens": \[$'
}
if [[ -n "$destdir" ]]; then
  say "staged: no API token made (each machine needs its own: install.sh there makes $token_path)"
elif config_sets_token; then
  say "$config_path sets an API token already"
else
  if [[ -s "$token_path" ]]; then
    say "using the existing API token in $token_path"
  else
    tmp="$(mktemp "$config_dir/.token.XXXXXX")"
    chmod 0600 "$tmp"
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$tmp"
    echo >> "$tmp"
    chown root:root "$tmp"
    mv -f "$tmp" "$token_path"
    say "generated an API token: $token_path (readable by root only)"
  fi
  chmod 0600 "$token_path"
  if grep -q '^auth:' "$config_path"; then
    say "warning: $config_path has an auth section without a token: add 'token_file: $token_path' to it,"
    say "warning: until then every local user can use the API (and start processes as root)"
  else
    printf '\n# Added by install.sh: the API token it generated. Every /api and /v2 request needs\n# Authorization: Bearer <token>; the web UI asks for it once.\nauth:\n  token_file: %s\n' \
      "$token_path" >> "$config_path"
    changed=1
    say "$config_path: auth.token_file set to $token_path"
  fi
  if ! check="$("$bin_path" check-config -config "$config_path" 2>&1 >/dev/null)"; then
    die "$config_path is not valid after adding the token, fix it and run this again: $check"
  fi
  port="$("$bin_path" check-config -config "$config_path" 2>/dev/null | grep -m1 '"port":' | tr -dc 0-9)"
  say "use it: curl -H \"Authorization: Bearer \$(sudo cat $token_path)\" http://127.0.0.1:${port:-8080}/api/tasks"
fi

if [[ $use_systemctl -eq 0 ]]; then
  say "done (files only)"
  exit 0
fi
systemctl daemon-reload
systemctl enable --quiet "$service"
say "enabled $service (starts at boot)"
if [[ $start -eq 0 ]]; then
  say "not started (--no-start): systemctl start cnet-agent"
  exit 0
fi
if systemctl is-active --quiet "$service"; then
  if [[ $changed -eq 1 ]]; then
    say "restarting $service for the new version (running models keep running)"
    systemctl restart "$service" || die "restart failed: see journalctl -u cnet-agent"
  else
    say "$service is running and unchanged"
  fi
else
  say "starting $service"
  systemctl start "$service" || die "start failed: see systemctl status cnet-agent and journalctl -u cnet-agent"
fi
# Type=notify: systemctl start returned once the agent answered READY=1 (it serves).
say "$(systemctl show -p StatusText --value "$service")"
say "done: systemctl status cnet-agent | journalctl -u cnet-agent -f"
