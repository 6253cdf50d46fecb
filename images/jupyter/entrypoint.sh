#!/bin/sh
# Runs the command (default: jupyter lab, set up by jupyter_server_config.json) as root, or as
# the user DLENV_UID asks for (user.sh, shared with other images), who owns the notebooks it
# writes.
# JUPYTER_TOKEN: the token; unset or empty, the server makes one at start and logs the URL
# with it. JUPYTER_PORT: the port (default 8888).
set -eu
. /usr/local/lib/dlenv/user.sh

# Empty is "not given": never a server without a token.
[ -n "${JUPYTER_TOKEN:-}" ] || unset JUPYTER_TOKEN
if [ "$(id -u)" = 0 ]; then
    dlenv_user
fi
dlenv_exec "$@"
