# The user DLENV_UID asks for, shared by the images' entrypoints (images/ssh, images/jupyter),
# which COPY this file from the named build context `common` (the recipe's `contexts`) to
# /usr/local/lib/dlenv/user.sh and source it.
#
# dlenv_user (as root): without DLENV_UID, the user is root. With DLENV_UID (and DLENV_GID,
#   default the same), it makes a user (DLENV_USER, default dev) with the host user's ids, so
#   files written to bind mounts keep their owner. The user joins the group `users`, which may
#   write to /opt/venv (pip install works without root, see images/python). DLENV_SUDO=1 lets
#   it run sudo without a password, where the image has sudo. Sets $user and $home.
# dlenv_exec COMMAND...: runs the command as that user (HOME and USER set), or as is.

dlenv_user() {
    user=root home=/root
    [ -n "${DLENV_UID:-}" ] || return 0
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
        if [ -d /etc/sudoers.d ]; then
            echo "$user ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/dlenv-user
            chmod 0440 /etc/sudoers.d/dlenv-user
        else
            echo "DLENV_SUDO=1: this image has no sudo" >&2
        fi
    fi
}

dlenv_exec() {
    if [ "${user:-root}" != root ]; then
        export HOME="$home" USER="$user"
        exec setpriv --reuid="$DLENV_UID" --regid="$(id -g "$user")" --init-groups -- "$@"
    fi
    exec "$@"
}
