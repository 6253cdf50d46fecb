#!/bin/sh
# Prepares sshd at container start, then runs the command (default: sshd -D -e).
#  - host keys: generated here, once per container, never shipped in the image;
#  - login keys: $SSH_AUTHORIZED_KEYS (key text) and/or a file mounted at
#    $SSH_AUTHORIZED_KEYS_FILE (default /run/secrets/authorized_keys) become
#    /root/.ssh/authorized_keys; without either, an existing (mounted) file is kept;
#  - the container's environment (CUDA, venv, proxies...) is written where ssh sessions
#    read it, since sshd starts sessions with a clean environment;
#  - DLENV_UID (and DLENV_GID, default the same) make a user (DLENV_USER, default dev) with
#    the host user's ids, so files written to bind mounts keep their owner: the login keys
#    are that user's, and a command other than sshd runs as that user. The user joins the
#    group `users`, which may write to /opt/venv (pip install works without root).
#    DLENV_SUDO=1 lets the user run sudo without a password.
set -eu

if [ "$(id -u)" = 0 ]; then
    ssh-keygen -A >/dev/null
    mkdir -p /run/sshd && chmod 0755 /run/sshd

    user=root home=/root
    if [ -n "${DLENV_UID:-}" ]; then
        gid=${DLENV_GID:-$DLENV_UID}
        group=$(getent group "$gid" | cut -d: -f1)
        [ -n "$group" ] || { group=${DLENV_USER:-dev}; groupadd -g "$gid" "$group"; }
        user=${DLENV_USER:-dev}
        existing=$(getent passwd "$DLENV_UID" | cut -d: -f1)
        if [ -z "$existing" ]; then
            useradd -M -d "/home/$user" -u "$DLENV_UID" -g "$gid" -G users -s /bin/bash "$user"
        else
            # e.g. ubuntu:24.04's `ubuntu` has uid 1000: it becomes the user asked for.
            [ "$existing" = "$user" ] || usermod -l "$user" -d "/home/$user" -m "$existing"
            usermod -g "$gid" -a -G users "$user"
        fi
        home=$(getent passwd "$user" | cut -d: -f6)
        # The home folder may be partly bind-mounted (e.g. ~/.cache): own what is not.
        install -d -o "$DLENV_UID" -g "$gid" "$home"
        rm -f /etc/sudoers.d/dlenv-user
        if [ "${DLENV_SUDO:-0}" = 1 ]; then
            echo "$user ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/dlenv-user
            chmod 0440 /etc/sudoers.d/dlenv-user
        fi
    fi

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
    if [ "$user" != root ] && case "${1:-}" in *sshd) false ;; *) true ;; esac; then
        export HOME="$home" USER="$user"
        exec setpriv --reuid="$DLENV_UID" --regid="$(id -g "$user")" --init-groups -- "$@"
    fi
fi

exec "$@"
