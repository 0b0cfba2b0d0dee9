#!/usr/bin/env bash
# Runs README.md's quick start and its test command in a fresh Debian 12 root that has
# nothing of ours in it: what a newcomer gets after `apt install python3 python3-venv`
# and a clone. It proves that the README's commands work as written, that the training
# prints what README shows, and that the tests pass without this machine's extras.
# Needs root and debootstrap. The root lives in a temporary folder, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[fresh-root] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || die "needs debootstrap: apt-get install debootstrap"

# What a fresh machine here has besides Debian: the pip configuration, the local wheel
# folders it names (bound read-only) and the CA bundle pip is told to trust.
PIP_FILES=(/etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt
    /root/.config/pip/pip.conf)
WHEEL_DIRS=(/opt/wheels /opt/pypi /opt/pypi-more)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
PIP_ENV=()
for name in $(compgen -e); do
    if [[ $name == PIP_* ]]; then PIP_ENV+=("$name=${!name}"); fi
done
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

TMP=$(mktemp -d -t xffl-fresh-root.XXXXXX)
[[ $TMP != "$PWD"/* ]] || die "temporary folder $TMP is inside the repository: set TMPDIR"
ROOT=$TMP/root
STAGE_PID=
TIMES=()
START=$SECONDS

root_pids() { # processes whose root directory is in the fresh root
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [[ $r == "$ROOT" || $r == "$ROOT"/* ]] && echo "${p#/proc/}"
    done
    return 0
}
root_mounts() { # mount points in the temporary folder, deepest first
    awk -v t="$TMP" '$2 == t || index($2, t "/") == 1 { print $2 }' /proc/mounts | sort -r
}
cleanup() {
    local rc=$? m pids i
    set +e
    # timeout passes the signal on to the stage it runs
    [[ -n $STAGE_PID ]] && kill -TERM "$STAGE_PID" 2>/dev/null
    # ranks run in sessions of their own: find everything left by its root directory
    for ((i = 0; i < 25; i++)); do
        pids=$(root_pids)
        [[ -z $pids ]] && break
        # shellcheck disable=SC2086
        if ((i < 15)); then kill -TERM $pids 2>/dev/null; else kill -KILL $pids 2>/dev/null; fi
        sleep 0.2
    done
    [[ -n $(root_pids) ]] && log "processes still running in $ROOT: $(root_pids | tr '\n' ' ')"
    for m in $(root_mounts); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    # never remove through a mount (/dev, the wheel folders are bound in there)
    if [[ -n $(root_mounts) ]]; then
        log "left $TMP in place, still mounted: $(root_mounts | tr '\n' ' ')"
    else
        log "removing $TMP"
        rm -rf --one-file-system "$TMP"
    fi
    if ((${#TIMES[@]})); then
        log "timings:"
        printf '[fresh-root]   %s\n' "${TIMES[@]}" "$(printf '%-30s %4ds' total $((SECONDS - START)))" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_stage() { # NAME SECONDS LOG COMMAND...: runs COMMAND with a hard time limit, output to LOG
    local name=$1 limit=$2 out=$3 start=$SECONDS rc=0
    shift 3
    log "$name (at most ${limit}s)"
    # in the background so that Ctrl-C reaches the trap at once
    timeout -k 10 "$limit" "$@" >"$out" 2>&1 &
    STAGE_PID=$!
    wait "$STAGE_PID" || rc=$?
    STAGE_PID=
    TIMES+=("$(printf '%-30s %4ds' "$name" $((SECONDS - start)))")
    log "$name: $((SECONDS - start))s, status $rc"
    if ((rc == 124 || rc == 137)); then
        tail -n 40 "$out" >&2
        die "$name: timed out after ${limit}s"
    fi
    return "$rc"
}

readme_block() { # HEADING LANG...: the first ```LANG block after the line starting with
    # HEADING; with more LANGs, each the first block after the previous one
    awk -v heading="$1" -v langs="${*:2}" '
        BEGIN { n = split(langs, want, " ") }
        !i && index($0, heading) == 1 { i = 1; next }
        !i { next }
        !inside && $0 == "```" want[i] { inside = 1; next }
        inside && $0 == "```" { if (i == n) exit; inside = 0; i++; next }
        inside && i == n { print }' README.md
}

QUICK=$(readme_block "## Quick start" bash)
EXPECTED=$(readme_block "## Quick start" bash text)
TESTS=$(readme_block "## Run the tests" bash)
[[ -n $QUICK && -n $EXPECTED && -n $TESTS ]] ||
    die "README.md: no \`\`\`bash block after '## Quick start' with a \`\`\`text block after it, or none after '## Run the tests'"
[[ $QUICK == *" && xffl-hpc emulate "* ]] || die "README.md: the quick start has no '&& xffl-hpc emulate'"
INSTALL=${QUICK%% && xffl-hpc emulate *}
TRAIN=${QUICK#"$INSTALL && "}
# the training runs in the shell the install part left: its virtual environment
[[ $INSTALL =~ (^|&&)\ *(\.|source)\ +([^ &]*/bin/activate) ]] ||
    die "README.md: the quick start activates no virtual environment"
ACTIVATE=". ${BASH_REMATCH[3]}"

# the checkout as a clone with uncommitted work would have it; no ignored paths (.venv)
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
    if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi # deleted, not yet committed
done | tar --null -T - -cf "$TMP/project.tar"

run_stage debootstrap 600 "$TMP/debootstrap.log" \
    debootstrap --variant=minbase bookworm "$ROOT" http://deb.debian.org/debian ||
    { tail -n 40 "$TMP/debootstrap.log" >&2; die "debootstrap failed"; }

# apt sources and /etc/hosts as a Debian 12 install writes them; its 127.0.1.1 line makes
# the host name resolve to loopback, a trap the distributed set-up must survive
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
HOST=$(hostname)
printf '%s\n' "127.0.0.1	localhost" "127.0.1.1	$HOST" "" \
    "# The following lines are desirable for IPv6 capable hosts" \
    "::1     localhost ip6-localhost ip6-loopback" "ff02::1 ip6-allnodes" \
    "ff02::2 ip6-allrouters" >"$ROOT/etc/hosts"
echo "$HOST" >"$ROOT/etc/hostname"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

# multi-process torch needs /proc, /dev/shm and the rest
mount -t proc proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
for d in "${WHEEL_DIRS[@]}"; do
    [[ -d $d ]] || continue
    mkdir -p "$ROOT$d"
    mount --bind "$d" "$ROOT$d"
    mount -o remount,bind,ro "$ROOT$d"
done

run_stage "apt: python3 python3-venv" 600 "$TMP/apt.log" \
    chroot "$ROOT" env -i PATH="$SYSTEM_PATH" DEBIAN_FRONTEND=noninteractive \
    bash -euo pipefail -c 'apt-get update && apt-get install -y python3 python3-venv' ||
    { tail -n 40 "$TMP/apt.log" >&2; die "apt-get failed in the root"; }

# after apt, whose ca-certificates would write its own bundle over this machine's
for f in "${PIP_FILES[@]}" "$CA_BUNDLE"; do
    if [[ -f $f ]]; then install -D -m 644 "$f" "$ROOT$f"; fi
done

IN_ROOT=(chroot "$ROOT" env -i HOME=/root PATH="$SYSTEM_PATH" LANG=C.UTF-8 "${PIP_ENV[@]}"
    bash -euo pipefail -c)
fresh_project() { # a fresh copy of the checkout at /project
    rm -rf "$ROOT/project"
    mkdir "$ROOT/project"
    tar -xf "$TMP/project.tar" -C "$ROOT/project"
}
FAILED=()

fresh_project
if ! run_stage "quick start: install" 900 "$TMP/install.log" "${IN_ROOT[@]}" "cd /project && $INSTALL"; then
    cat "$TMP/install.log" >&2
    FAILED+=("quick start: the install failed: $INSTALL")
elif ! run_stage "quick start: training" 300 "$TMP/train.log" \
    "${IN_ROOT[@]}" "cd /project && $ACTIVATE && $TRAIN"; then
    cat "$TMP/train.log" >&2
    FAILED+=("quick start: the training failed: $TRAIN")
elif ! python3 - "$TMP/train.log" <(printf '%s\n' "$EXPECTED") <<'EOF'; then
# The training's output must be README's block line by line: a number matches any number,
# README's /path/to/ any folder, "..." zero or more further lines of the shape of the line
# before it; leading and trailing spaces do not count.
import re
import sys

NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
FOLDER = r"/(?:[^/\s]+/)*"


def shape(line):
    return FOLDER.join(
        NUMBER.join(re.escape(part) for part in re.split(NUMBER, piece))
        for piece in line.strip().split("/path/to/")
    )


with open(sys.argv[1]) as f:
    output = f.read().splitlines()
with open(sys.argv[2]) as f:
    readme = f.read().splitlines()
pattern, previous = "", None
for line in readme:
    if line.strip() == "...":
        if previous is None:
            sys.exit("README's block starts with '...'")
        pattern += rf"(?:[ \t]*{previous}[ \t]*\n)*"
    else:
        previous = shape(line)
        pattern += rf"[ \t]*{previous}[ \t]*\n"
if re.fullmatch(pattern, "".join(line + "\n" for line in output)):
    sys.exit(0)
shapes = [re.compile(shape(line)) for line in readme if line.strip() != "..."]
unexpected = [line for line in output if not any(s.fullmatch(line.strip()) for s in shapes)]
print("quick start: the training's output is not what README.md shows.", file=sys.stderr)
if unexpected:
    print(f"{len(unexpected)} unexpected line(s):", *unexpected, sep="\n", file=sys.stderr)
else:
    print("Its lines, in the wrong order or number:", *output, sep="\n", file=sys.stderr)
print("README.md's block:", *readme, sep="\n", file=sys.stderr)
sys.exit(1)
EOF
    FAILED+=("quick start: the training's output is not README's block")
else
    log "quick start: the output matches README's block:"
    cat "$TMP/train.log" >&2
fi

# the test command alone, from a fresh copy, as someone who skipped the quick start
fresh_project
rc=0
run_stage "tests" 1500 "$TMP/tests.log" "${IN_ROOT[@]}" "cd /project && $TESTS" || rc=$?
SUMMARY=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)\b.* in [0-9.]+s' \
    "$TMP/tests.log" | tail -n 1 || true)
if ((rc != 0)) || [[ -z $SUMMARY ]] || grep -qE '\b[0-9]+ (failed|errors?)\b' <<<"$SUMMARY"; then
    cat "$TMP/tests.log" >&2
    FAILED+=("tests: status $rc, summary: ${SUMMARY:-none}")
else
    log "tests: $SUMMARY"
fi

if ((${#FAILED[@]})); then
    printf '[fresh-root] FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
log "README's quick start and tests pass in a fresh Debian 12 root"
