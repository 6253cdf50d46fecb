#!/bin/sh
# Prepares sshd at container start, then runs the command (default: sshd -D -e).
#  - host keys: generated here, once per container, never shipped in the image;
#  - login keys: $SSH_AUTHORIZED_KEYS (key text) and/or a file mounted at
#    $SSH_AUTHORIZED_KEYS_FILE (default /run/secrets/authorized_keys) become
#    /root/.ssh/authorized_keys; without either, an existing (mounted) file is kept;
#  - the container's environment (CUDA, venv, proxies...) is written where ssh sessions
#    read it, since sshd starts sessions with a clean environment;
#  - DLENV_UID (and DLENV_GID, DLENV_USER, DLENV_SUDO) make a user with the host user's ids
#    (user.sh, shared with other images): the login keys are that user's, and a command
#    other than sshd runs as that user.
set -eu
. /usr/local/lib/dlenv/user.sh

if [ "$(id -u)" = 0 ]; then
    ssh-keygen -A >/dev/null
    mkdir -p /run/sshd && chmod 0755 /run/sshd
    dlenv_user

    keys_file=${SSH_AUTHORIZED_KEYS_FILE:-/run/secrets/authorized_keys}
    if [ -n "${SSH_AUTHORIZED_KEYS:-}" ] || [ -s "$keys_file" ]; then
        install -d -m 0700 -o "$user" -g "$(id -g "$user")" "$home/.ssh"
        tmp=$(mktemp)
        [ -z "${SSH_AUTHORIZED_KEYS:-}" ] || printf '%s\n' "$SSH_AUTHORIZED_KEYS" >> "$tmp"
        [ ! -s "$keys_file" ] || cat "$keys_file" >> "$tmp"
        install -m 0600 -o "$user" -g "$(id -g "$user")" "$tmp" "$home/.ssh/authorized_keys"
        rm -f "$tmp"
    elif [ ! -s "$home/.ssh/authorized_keys" ] && case "${1:-}" in *sshd) true ;; *) false ;; esac; then
        echo "ssh: no authorized keys (set SSH_AUTHORIZED_KEYS or mount $keys_file): nobody can log in" >&2
    fi

    # Names that are per-process or secret stay out; values on one line only.
    env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=' \
        | grep -vE '^(HOME|HOSTNAME|PWD|OLDPWD|SHLVL|TERM|USER|LOGNAME|MAIL|SHELL|_|SSH_[A-Z_]*)=' \
        > /etc/environment.tmp || true
    mv /etc/environment.tmp /etc/environment
    # Login shells reset PATH in /etc/profile; this puts the container's values back.
    sed "s/'/'\\\\''/g; s/^\([^=]*\)=\(.*\)$/export \1='\2'/" /etc/environment \
        > /etc/profile.d/00-container-env.sh
    case "${1:-}" in *sshd) exec "$@" ;; esac
    dlenv_exec "$@"
fi

exec "$@"
