#!/bin/sh
# Runs a variant's checks one after another in one container (starting a container per check
# cost more than most checks take). Check i's command is $DLENV_CHECK_i, its limit in seconds
# $DLENV_TIMEOUT_i; each runs in a shell of its own from the image's working directory, so no
# variable or directory change reaches the next. After its output comes one line:
#   <marker> i exit-code start end        (start/end: /proc/uptime seconds)
# $DLENV_MARKER is new for each run, so no check's output can pass for a result.
i=1
while [ "$i" -le "$DLENV_CHECKS" ]; do
    eval "check=\$DLENV_CHECK_$i limit=\$DLENV_TIMEOUT_$i"
    start=$(cut -d' ' -f1 /proc/uptime)
    DLENV_CHECK=$check timeout "$limit" sh -c "$check" </dev/null 2>&1
    code=$?
    printf '\n%s %s %s %s %s\n' "$DLENV_MARKER" "$i" "$code" "$start" "$(cut -d' ' -f1 /proc/uptime)"
    i=$((i + 1))
done
