#!/usr/bin/env bash
# Helpers for p2pvps-deploy and its package recipes (the install, remove and start scripts beside each
# manifest). Sourced, never run. p2pvps-deploy exports the environment below before running a recipe:
#
#   P2PVPS_PKG           package name (e.g. webserver)
#   P2PVPS_PKG_DIR       the recipe directory (manifest, scripts, files/)
#   P2PVPS_STORAGE       the renter's persistent storage (/media/storage)
#   P2PVPS_DATA          the package's own directory in it (/media/storage/<package>)
#   P2PVPS_OWNER         the renter's login (sudo's SUDO_USER), or empty when run by root directly
#   P2PVPS_APT_PACKAGES  the manifest's APT_PACKAGES
#   P2PVPS_JOURNAL       undo journal of the install being run (empty outside an install)
#   P2PVPS_STEP_FILE     where the name of the current step is written (for the failure message)
#   P2PVPS_BACKUP_DIR    where files an install replaces are kept until it succeeds
#
# Undo journal: one line per change an install made, KIND<TAB>PATH[<TAB>BACKUP] or KIND<TAB>SERVICE;
# p2pvps-deploy replays it backwards when the install fails (see undo_journal in p2pvps-deploy).

# The recipe environment (empty when p2pvps-deploy itself sources this file).
P2PVPS_PKG="${P2PVPS_PKG:-}"
P2PVPS_PKG_DIR="${P2PVPS_PKG_DIR:-}"
P2PVPS_STORAGE="${P2PVPS_STORAGE:-/media/storage}"
P2PVPS_DATA="${P2PVPS_DATA:-}"

# Runtime directories (container-local: a new container starts without them).
readonly P2PVPS_RUN_DIR=/run/p2pvps-deploy
readonly P2PVPS_LOG_DIR=/var/log/p2pvps-deploy

log() { printf 'p2pvps-deploy: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Announces a named step; the failure message names the last one. For tests,
# P2PVPS_DEPLOY_FAIL_AT=STEP makes that step fail on purpose (to check the rollback).
step() {
    local name="$1"
    log "step: $name"
    if [[ -n "${P2PVPS_STEP_FILE:-}" ]]; then
        printf '%s\n' "$name" >"$P2PVPS_STEP_FILE"
    fi
    if [[ -n "${P2PVPS_DEPLOY_FAIL_AT:-}" && "$P2PVPS_DEPLOY_FAIL_AT" == "$name" ]]; then
        die "step '$name' failed on purpose (P2PVPS_DEPLOY_FAIL_AT=$name)"
    fi
}

# Records one change for the rollback (no-op outside an install: start-all, restart, remove).
journal() {
    [[ -n "${P2PVPS_JOURNAL:-}" ]] || return 0
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$P2PVPS_JOURNAL"
}

# --- files -------------------------------------------------------------------------------------------

# Creates a directory (and missing parents) if absent; each directory created is journaled.
# Usage: ensure_dir PATH [MODE] [OWNER]   (OWNER: user or user:group; applied only when created)
ensure_dir() {
    local path="$1" mode="${2:-0755}" owner="${3:-}" missing=() p
    p="$path"
    while [[ ! -e "$p" ]]; do
        missing=("$p" "${missing[@]}")
        p="$(dirname "$p")"
    done
    for p in "${missing[@]}"; do
        install -d -m "$mode" "$p"
        journal rmtree "$p"
        if [[ -n "$owner" ]]; then
            chown "$owner" "$p"
        fi
    done
    [[ -d "$path" ]] || die "$path exists and is not a directory"
}

# Copies a recipe file (or directory tree) to DEST unless DEST exists: the renter's edits and data
# are kept across reinstalls. Usage: install_default SRC DEST [OWNER]
install_default() {
    local src="$1" dest="$2" owner="${3:-}"
    [[ -e "$dest" || -L "$dest" ]] && return 0
    cp -R --no-preserve=ownership "$src" "$dest"
    journal rmtree "$dest"
    if [[ -n "$owner" ]]; then
        chown -R "$owner" "$dest"
    fi
}

# Writes stdin to DEST (mode MODE) if DEST is absent, or replaces it keeping a backup for the
# rollback. Usage: ... | replace_file DEST [MODE]
replace_file() {
    local dest="$1" mode="${2:-0644}" tmp
    tmp="$(mktemp "$dest.new.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -e "$dest" || -L "$dest" ]]; then
        if cmp -s "$tmp" "$dest"; then
            rm -f "$tmp"
            return 0
        fi
        backup_path "$dest"
    else
        journal rm "$dest"
    fi
    mv -f "$tmp" "$dest"
}

# Writes stdin to DEST only if DEST is absent (a config the renter may edit afterwards).
write_default() {
    local dest="$1" mode="${2:-0644}"
    if [[ -e "$dest" || -L "$dest" ]]; then
        cat >/dev/null
        return 0
    fi
    replace_file "$dest" "$mode"
}

# Moves PATH aside into the install's backup directory and journals its restoration.
backup_path() {
    local path="$1" backup
    [[ -n "${P2PVPS_BACKUP_DIR:-}" ]] || { rm -rf -- "$path"; return 0; }
    backup="$(mktemp -d "$P2PVPS_BACKUP_DIR/b.XXXXXX")/item"
    cp -a -- "$path" "$backup"
    journal restore "$path" "$backup"
}

# Makes LINK a symlink to TARGET (container-local config pointing into the storage). Whatever was at
# LINK before is backed up for the rollback. Usage: ensure_link TARGET LINK
ensure_link() {
    local target="$1" link="$2"
    if [[ -L "$link" && "$(readlink "$link")" == "$target" ]]; then
        return 0
    fi
    if [[ -e "$link" || -L "$link" ]]; then
        backup_path "$link"
        rm -rf -- "$link"
    else
        journal rm "$link"
    fi
    ln -s -- "$target" "$link"
}

# Removes PATH if present, backed up for the rollback during an install.
remove_path() {
    local path="$1"
    [[ -e "$path" || -L "$path" ]] || return 0
    backup_path "$path"
    rm -rf -- "$path"
}

# --- Debian packages ---------------------------------------------------------------------------------

# Package lists older than this are refreshed before an install.
readonly APT_LISTS_MAX_AGE_MINUTES=1440

apt_lists_fresh() {
    local newest
    newest="$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin "-$APT_LISTS_MAX_AGE_MINUTES" -print -quit)"
    [[ -n "$newest" ]]
}

apt_update() {
    log "apt-get update"
    apt-get update -q -o APT::Update::Error-Mode=any -o Acquire::Languages=none >&2
}

# Installs Debian packages (no Recommends, keeping existing config files). Maintainer scripts may not
# start services (there is no systemd here: p2pvps-deploy starts the daemons itself), through a
# policy-rc.d present only during the install. Packages apt-get installed are left installed if a
# later step fails (they may be shared; `apt-get autoremove` cleans up).
apt_install() {
    [[ $# -gt 0 ]] || return 0
    local missing=() pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == installed ]] || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages present: $*"
        return 0
    fi
    local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# p2pvps-deploy: no service starts during apt-get install\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    apt_lists_fresh || apt_update || rc=$?
    if [[ $rc -eq 0 ]]; then
        apt_get_install "${missing[@]}" || {
            # The lists may name versions the mirror has dropped: refresh once and try again.
            apt_update && apt_get_install "${missing[@]}"
        } || rc=$?
    fi
    if [[ $added_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
    [[ $rc -eq 0 ]] || die "apt-get could not install: ${missing[*]}"
}

# Installs the manifest's APT_PACKAGES.
apt_install_manifest() {
    local pkgs=()
    read -r -a pkgs <<<"${P2PVPS_APT_PACKAGES:-}"
    apt_install "${pkgs[@]}"
}

apt_get_install() {
    log "apt-get install $*"
    # --force-unsafe-io: no fsync per file (npm alone is 373 packages); an interrupted install is
    # simply run again.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-unsafe-io "$@" >&2
}

# --- services (no systemd in the container: daemons run in the foreground under setsid) ---------------

# A pidfile holds "PID STARTTIME" (the process's start time in clock ticks since boot), so a stale
# pidfile whose PID was reused after a container restart is not mistaken for the service.
pidfile() { printf '%s/%s.pid\n' "$P2PVPS_RUN_DIR" "$1"; }

proc_starttime() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    # Fields after the command: state is field 3 of stat; starttime is field 22.
    # shellcheck disable=SC2086 # splitting the numeric fields on purpose
    set -- $stat
    printf '%s\n' "${20}"
}

# Prints the service's PID if it is running. sshd is not ours (the connector runs it): its own
# pidfile is read, for reloads only.
svc_pid() {
    local file pid start now
    if [[ "$1" == sshd ]]; then
        read -r pid 2>/dev/null </run/sshd.pid || return 1
        [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == sshd ]] || return 1
        printf '%s\n' "$pid"
        return 0
    fi
    file="$(pidfile "$1")"
    [[ -r "$file" ]] || return 1
    read -r pid start <"$file" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    now="$(proc_starttime "$pid")" || return 1
    [[ "$now" == "$start" ]] || return 1
    printf '%s\n' "$pid"
}

svc_running() { svc_pid "$1" >/dev/null; }

# Starts a daemon in the foreground mode of its own, detached (setsid), logging to
# /var/log/p2pvps-deploy/NAME.log, and records its pidfile. Journals a stop for the rollback.
# Usage: svc_start NAME RUN_AS -- COMMAND...   (RUN_AS: root, or UID:GID to drop to through setpriv)
svc_start() {
    local name="$1" run_as="$2" pid start
    shift 3
    if svc_running "$name"; then
        return 0
    fi
    mkdir -p "$P2PVPS_RUN_DIR" "$P2PVPS_LOG_DIR"
    local cmd=("$@")
    if [[ "$run_as" != root ]]; then
        [[ "$run_as" =~ ^([0-9]+):([0-9]+)$ ]] || die "svc_start: RUN_AS must be root or UID:GID"
        cmd=(setpriv --reuid="${BASH_REMATCH[1]}" --regid="${BASH_REMATCH[2]}" --clear-groups -- "$@")
    fi
    log "starting $name: $*"
    # 9>&-: the daemon must not inherit p2pvps-deploy's lock.
    setsid "${cmd[@]}" </dev/null >>"$P2PVPS_LOG_DIR/$name.log" 2>&1 9>&- &
    pid=$!
    start="$(proc_starttime "$pid")" || die "$name exited at once; see $P2PVPS_LOG_DIR/$name.log"
    printf '%s %s\n' "$pid" "$start" >"$(pidfile "$name")"
    journal stop "$name"
    sleep 0.3
    svc_running "$name" || die "$name exited at once; last lines of $P2PVPS_LOG_DIR/$name.log:
$(tail -n 5 "$P2PVPS_LOG_DIR/$name.log")"
}

# Stops a service: SIGTERM, then SIGKILL after 10 s.
svc_stop() {
    local name="$1" pid i
    if pid="$(svc_pid "$name")"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [[ -e "/proc/$pid" ]] || break
            sleep 0.1
        done
        if [[ -e "/proc/$pid" ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$(pidfile "$name")"
}

# Asks a running service to re-read its configuration (SIGHUP: nginx and tor reload on it).
svc_reload() {
    local name="$1" pid
    pid="$(svc_pid "$name")" || return 0
    case "$name" in
        nginx) nginx -t -q || die "the nginx configuration has errors (nginx -t above)" ;;
        sshd) /usr/sbin/sshd -t || die "the sshd configuration has errors (sshd -t above)" ;;
    esac
    log "reloading $name"
    local workers=""
    if [[ "$name" == nginx ]]; then
        workers="$(pgrep -P "$pid" || true)"
    fi
    kill -HUP "$pid"
    if [[ "$name" == nginx ]]; then
        nginx_wait_reloaded "$pid" "$workers"
    fi
}

# nginx reloads in the background: its master starts workers with the new configuration, then tells
# the old ones to finish. Returns once the old workers are gone, so that the next request is served
# with the new configuration (a test's probe right after an install came back with the old one).
# Usage: nginx_wait_reloaded MASTER_PID OLD_WORKER_PIDS
nginx_wait_reloaded() {
    local master="$1" old="$2" now w i stale
    for ((i = 0; i < 100; i++)); do
        now=" $(pgrep -P "$master" | tr '\n' ' ' || true)"
        stale=0
        for w in $old; do
            if [[ "$now" == *" $w "* ]]; then
                stale=1
            fi
        done
        if [[ "$stale" == 0 && "$now" != " " ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "nginx: old workers still finishing requests after 10 s; going on"
}

# Waits until something accepts TCP connections on 127.0.0.1:PORT. Usage: wait_port PORT [SECONDS]
wait_port() {
    local port="$1" seconds="${2:-15}" i
    for ((i = 0; i < seconds * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing answers on 127.0.0.1:$port after ${seconds}s"
}

# --- nginx, shared by the web packages -----------------------------------------------------------------

# One nginx serves every web package: each adds a site, a symlink
# /etc/nginx/sites-enabled/p2pvps-<package>.conf -> its nginx.conf in the storage.
# Debian's default site (a placeholder page on port 80) is disabled.
nginx_enable_site() {
    local conf="$1"
    remove_path /etc/nginx/sites-enabled/default
    ensure_link "$conf" "/etc/nginx/sites-enabled/p2pvps-$P2PVPS_PKG.conf"
}

# Starts nginx, or reloads it if it runs already (journaled either way, for the rollback).
nginx_start() {
    if svc_running nginx; then
        svc_reload nginx
        journal reload nginx
    else
        nginx -t -q || die "the nginx configuration has errors (nginx -t above)"
        svc_start nginx root -- /usr/sbin/nginx -g 'daemon off;'
    fi
}

# Prints UID:GID of PATH's owner for svc_start, or root when root owns it.
run_as_owner_of() {
    local ids
    ids="$(stat -c '%u:%g' "$1")"
    if [[ "$ids" == 0:* ]]; then
        printf 'root\n'
    else
        printf '%s\n' "$ids"
    fi
}

# Prints an owner spec for chown (the renter, when known), or nothing.
owner_spec() {
    if [[ -n "${P2PVPS_OWNER:-}" ]]; then
        printf '%s:%s\n' "$P2PVPS_OWNER" "$(id -gn "$P2PVPS_OWNER")"
    fi
}

# --- passwords for nginx's basic auth ------------------------------------------------------------------

valid_login() { [[ "$1" =~ ^[A-Za-z0-9._-]{1,32}$ ]]; }

# Reads a password from stdin (first line), or asks twice on a terminal, and prints its SHA-512 crypt
# hash (a line of an htpasswd file: glibc's crypt, which nginx's auth_basic_user_file uses, accepts
# it). The password itself is never written anywhere; it goes to openssl through a pipe, not argv.
read_password_hash() {
    local pw="" again=""
    if [[ -t 0 ]]; then
        read -r -s -p "password: " pw
        printf '\n' >&2
        read -r -s -p "the same password again: " again
        printf '\n' >&2
        [[ "$pw" == "$again" ]] || die "the two passwords differ"
    else
        IFS= read -r pw || [[ -n "$pw" ]] || die "--password: no password on stdin"
    fi
    [[ ${#pw} -ge 8 ]] || die "the password must have at least 8 characters"
    [[ "$pw" != *[[:cntrl:]]* ]] || die "the password may not contain control characters"
    printf '%s\n' "$pw" | openssl passwd -6 -stdin
}

# Writes an htpasswd file with one login (mode 0640, group www-data: nginx's workers read it).
# Usage: write_htpasswd FILE LOGIN HASH
write_htpasswd() {
    local file="$1" login="$2" hash="$3"
    printf '%s:%s\n' "$login" "$hash" | replace_file "$file" 0640
    chgrp www-data "$file"
}
