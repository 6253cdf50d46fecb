#!/bin/sh
# Point the distribution's own apt sources at mirrors.
#   $1: URI for the main archive (suites <codename>, <codename>-updates/-backports/-proposed)
#   $2: URI for the security archive (suite <codename>-security); empty keeps it
# Only the files a Debian/Ubuntu base image ships are touched (one-line sources.list and
# deb822 debian.sources/ubuntu.sources); other repositories (e.g. NVIDIA's) keep their URIs.
set -eu
main=${1:-} security=${2:-}
[ -n "$main$security" ] || exit 0
. /etc/os-release
codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
hits=$(mktemp)
for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/ubuntu.sources; do
    [ -s "$f" ] || continue
    case $f in *.sources) fmt=deb822 ;; *) fmt=oneline ;; esac
    awk -v fmt="$fmt" -v hitsfile="$hits" -v cn="$codename" -v main="$main" -v sec="$security" '
        function kind(s) {
            if (s == cn "-security") return "sec"
            if (s == cn || s == cn "-updates" || s == cn "-backports" || s == cn "-proposed") return "main"
            return ""
        }
        function pick(k) { u = (k == "main") ? main : (k == "sec") ? sec : ""; if (u != "") hits[k]++; return u }
        fmt == "oneline" {
            if ($0 ~ /^[ \t]*deb(-src)?[ \t]/) {
                # fields: type [options] uri suite components...; options may hold spaces
                line = $0; opts = ""
                sub(/^[ \t]*/, "", line)
                type = line; sub(/[ \t].*/, "", type); rest = substr(line, length(type) + 1)
                sub(/^[ \t]*/, "", rest)
                if (substr(rest, 1, 1) == "[") {
                    e = index(rest, "]"); opts = substr(rest, 1, e) " "; rest = substr(rest, e + 1)
                    sub(/^[ \t]*/, "", rest)
                }
                n = split(rest, w, /[ \t]+/)
                u = pick(kind(w[2]))
                if (u != "") {
                    out = type " " opts u
                    for (i = 2; i <= n; i++) out = out " " w[i]
                    print out; next
                }
            }
            print; next
        }
        # deb822: one paragraph per entry; decide on its Suites, then rewrite its URIs
        { buf[++nb] = $0 }
        /^[ \t]*$/ { flush() }
        END { if (fmt == "deb822") flush(); print hits["main"] + 0, hits["sec"] + 0 >> hitsfile }
        function flush(   i, k, s, n, w, u) {
            k = ""
            for (i = 1; i <= nb; i++) if (buf[i] ~ /^Suites:/) {
                s = buf[i]; sub(/^Suites:[ \t]*/, "", s); n = split(s, w, /[ \t]+/)
                for (j = 1; j <= n; j++) if (kind(w[j]) != "") { k = kind(w[j]); break }
            }
            u = pick(k)
            for (i = 1; i <= nb; i++) {
                if (u != "" && buf[i] ~ /^URIs:/) { print "URIs: " u } else print buf[i]
            }
            nb = 0
        }
    ' "$f" > "$f.new"
    cat "$f.new" > "$f" && rm "$f.new"
done
set -- $(awk '{ m += $1; s += $2 } END { print m + 0, s + 0 }' "$hits"); rm -f "$hits"
# A main mirror that matched nothing is a mistake; a missing security entry is normal
# (mmdebstrap writes only the main one).
if [ -n "$main" ] && [ "$1" = 0 ]; then
    echo "apt-sources.sh: no '$codename' entry found to point at $main" >&2; exit 1
fi
if [ -n "$security" ] && [ "$2" = 0 ]; then
    echo "apt-sources.sh: note: no '$codename-security' entry, security mirror unused" >&2
fi
grep -rh '^[^#]' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -E '^(deb|URIs|Suites)' >&2 || true
