#!/usr/bin/env bash
# Install peercam as a service on Raspberry Pi OS Bookworm, 64-bit (Pi Zero 2 W,
# 3, 4, 5), from the checkout this script is in:
#
#   sudo scripts/install-pi.sh --rendezvous wss://cam.example.net
#
# apt packages (python3-picamera2 from the Raspberry Pi archive), a virtualenv
# in /opt/peercam/venv made with --system-site-packages (picamera2 and
# libcamera come from apt, not pip), the service user and its device groups,
# the units in /etc/systemd/system, a commented /etc/peercam/camera.toml
# (written once, never overwritten), the device identity, then the device ID
# and a pairing QR code. Running it again changes only what differs and says
# so. --dry-run prints every action ("[dry-run] ...") and changes nothing.
#
# 32-bit Raspberry Pi OS (armhf) is not supported: PyAV >= 14 and aiortc publish
# no armhf wheels, and PyAV >= 14 does not build against Bookworm's FFmpeg 5.1.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install-pi.sh --rendezvous URL [options]

  --rendezvous URL   rendezvous server (ws://, wss://, http://, https://); needed
                     on the first install, written into /etc/peercam/camera.toml
  --source NAME      camera source written into the config: picamera2 (default),
                     v4l2, testpattern or file
  --user NAME        service user (default: peercam)
  --prefix DIR       install directory (default: /opt/peercam; venv in DIR/venv)
  --with-rendezvous  also enable and start peercam-rendezvous.service
  --with-stun        also enable and start peercam-stun.service
  --with-whep        also enable and start peercam-whep.service (the WHEP
                     gateway for Home Assistant and other players; settings in
                     /etc/peercam/whep.toml)
  --pair             open a pairing window even if the device already has a key
  --dry-run          print every action, change nothing
  --root DIR         install files under DIR (an image or a test tree): no apt,
                     no identity; users go into DIR/etc/passwd; units are
                     enabled offline (systemctl --root)
  --no-apt           skip apt-get
  --no-user          skip creating the user and groups
  --no-venv          skip the virtualenv and pip (and so the identity step)
  --no-systemctl     skip daemon-reload, enable and start
  -h, --help         this text
EOF
}

die() { echo "install-pi: $*" >&2; exit 2; }

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rendezvous="" source_name=picamera2 user=peercam prefix=/opt/peercam root=""
dry_run=0 do_apt=1 do_user=1 do_venv=1 do_systemctl=1
with_rendezvous=0 with_stun=0 with_whep=0 force_pair=0

while [ $# -gt 0 ]; do
    case "$1" in
        --rendezvous) [ $# -ge 2 ] || die "$1 needs a value"; rendezvous=$2; shift ;;
        --rendezvous=*) rendezvous=${1#*=} ;;
        --source) [ $# -ge 2 ] || die "$1 needs a value"; source_name=$2; shift ;;
        --source=*) source_name=${1#*=} ;;
        --user) [ $# -ge 2 ] || die "$1 needs a value"; user=$2; shift ;;
        --user=*) user=${1#*=} ;;
        --prefix) [ $# -ge 2 ] || die "$1 needs a value"; prefix=$2; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --root) [ $# -ge 2 ] || die "$1 needs a value"; root=$2; shift ;;
        --root=*) root=${1#*=} ;;
        --with-rendezvous) with_rendezvous=1 ;;
        --with-stun) with_stun=1 ;;
        --with-whep) with_whep=1 ;;
        --pair) force_pair=1 ;;
        --dry-run) dry_run=1 ;;
        --no-apt) do_apt=0 ;;
        --no-user) do_user=0 ;;
        --no-venv) do_venv=0 ;;
        --no-systemctl) do_systemctl=0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# --- Checks (read-only) -----------------------------------------------------
# Values end up in sed expressions, TOML strings and unit files: allow only
# characters that need no quoting in any of them.
[[ $user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--user $user: not a valid user name"
[[ $prefix =~ ^/[A-Za-z0-9._/-]*$ ]] || die "--prefix $prefix: need an absolute path of [A-Za-z0-9._/-]"
prefix=${prefix%/}
case "$source_name" in
    picamera2|v4l2|testpattern|file) ;;
    *) die "--source $source_name: choose picamera2, v4l2, testpattern or file" ;;
esac
# URL characters (RFC 3986) except the quote and backslash a TOML string would need escaped.
url_re='^(wss?|https?)://[]A-Za-z0-9._~:/?#@!$&()*+,;=%[-]+$'
if [ -n "$rendezvous" ] && ! [[ $rendezvous =~ $url_re ]]; then
    die "--rendezvous $rendezvous: need a ws://, wss://, http:// or https:// URL"
fi
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root: not a directory"
    root=$(cd "$root" && pwd)
    [ "$root" = / ] && root=""
fi
offline=0  # no running systemd to talk to: enable units on disk only
if [ -n "$root" ] || [ ! -d /run/systemd/system ]; then offline=1; fi
if [ "$dry_run" -eq 0 ] && [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or try --dry-run"
fi
if [ "$do_venv" -eq 1 ] && [ -z "$root" ]; then
    arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
    case "$arch" in
        armhf|armel|armv6l|armv7l)
            die "$arch: peercam needs 64-bit Raspberry Pi OS (arm64): PyAV >= 14 and aiortc" \
                "have no $arch wheels, and Bookworm's FFmpeg 5.1 is too old to build PyAV" ;;
    esac
fi

venv=$prefix/venv
peercam=$venv/bin/peercam
state_dir=/var/lib/peercam
config=/etc/peercam/camera.toml
groups=(video gpio dialout)
units=(peercam-camera.service peercam-rendezvous.service peercam-stun.service peercam-whep.service)
if [ ! -e "$root$config" ] && [ -z "$rendezvous" ]; then
    die "first install: --rendezvous URL is needed (the camera registers there)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd /

# --- Output and actions -----------------------------------------------------
# Every change is announced as "[dry-run] CMD" (and not run) or "[run] CMD";
# what is already in place is "[ok] ...", what an option leaves out "[skip] ...".
changes=0
say() { echo "$*"; }
ok() { echo "[ok] $*"; }
skip() { echo "[skip] $*"; }
announce() {
    changes=$((changes + 1))
    local arg line=""
    for arg in "$@"; do  # shell-quoted only where needed, so it can be pasted
        if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
    done
    if [ "$dry_run" -eq 1 ]; then echo "[dry-run]$line"; else echo "[run]$line"; fi
}
run() {
    announce "$@"
    [ "$dry_run" -eq 1 ] || "$@"
}

# User and group lookups read the files under --root (system accounts always
# live there); without --root that is /etc/passwd and /etc/group.
has_group() { [ -r "$root/etc/group" ] && awk -F: -v g="$1" '$1 == g {f = 1} END {exit !f}' "$root/etc/group"; }
has_user() { [ -r "$root/etc/passwd" ] && awk -F: -v u="$1" '$1 == u {f = 1} END {exit !f}' "$root/etc/passwd"; }
user_in_group() {
    [ -r "$root/etc/group" ] && awk -F: -v g="$2" -v u="$1" \
        '$1 == g {n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1} END {exit !f}' \
        "$root/etc/group"
}
user_ids() { awk -F: -v u="$1" '$1 == u {print $3 ":" $4}' "$root/etc/passwd"; }
prefix_args=()
[ -n "$root" ] && prefix_args=(--prefix "$root")

# Install a rendered file where it differs (with "once": only where absent).
# Announced with the checkout's file as the source; returns 1 if nothing to do.
put_file() {  # put_file RENDERED DEST MODE LABEL [once]
    local rendered=$1 dest=$root$2 mode=$3 label=$4 once=${5:-}
    if [ -e "$dest" ]; then
        if [ -n "$once" ]; then ok "$2 exists: kept as it is"; return 1; fi
        if cmp -s "$rendered" "$dest"; then ok "$2 is up to date"; return 1; fi
    fi
    announce install -D -m "$mode" "$label" "$dest"
    [ "$dry_run" -eq 1 ] || install -D -m "$mode" "$rendered" "$dest"
}

# --- 1. apt packages ----------------------------------------------------------
pkg_installed() { [ "$(dpkg-query -W -f="\${db:Status-Status}" "$1" 2>/dev/null)" = installed ]; }
if [ -n "$root" ]; then
    skip "apt: --root (install python3-venv and python3-picamera2 in the image yourself)"
elif [ "$do_apt" -eq 0 ]; then
    skip "apt: --no-apt"
else
    # python3-venv brings ensurepip (pip itself then comes from the venv).
    # python3-picamera2 and python3-lgpio (gpiozero's pin driver on Bookworm)
    # exist only in the Raspberry Pi archive. PyAV, aiortc and cryptography
    # wheels bundle their C libraries: no FFmpeg or OpenSSL packages needed.
    wanted=(python3-venv)
    for pkg in python3-picamera2 python3-lgpio; do
        if pkg_installed "$pkg" || apt-cache show "$pkg" >/dev/null 2>&1; then
            wanted+=("$pkg")
        else
            skip "apt: $pkg is not in the apt sources (not Raspberry Pi OS?)"
            [ "$pkg" = python3-picamera2 ] && [ "$source_name" = picamera2 ] &&
                echo "install-pi: warning: the picamera2 source will not work without python3-picamera2" >&2
        fi
    done
    missing=()
    for pkg in "${wanted[@]}"; do pkg_installed "$pkg" || missing+=("$pkg"); done
    if [ "${#missing[@]}" -eq 0 ]; then
        ok "apt packages installed: ${wanted[*]}"
    else
        run apt-get update -qq
        # --no-install-recommends: python3-picamera2 recommends the Qt/OpenGL preview stack.
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

# --- 2. service user and device groups ---------------------------------------
if [ "$do_user" -eq 0 ]; then
    skip "user and groups: --no-user"
else
    if [ -n "$root" ] && [ ! -e "$root/etc/passwd" ] && [ "$dry_run" -eq 0 ]; then
        die "--root $root has no etc/passwd to add $user to (add --no-user)"
    fi
    # The unit names these groups in SupplementaryGroups=; a missing one fails
    # the start (216/GROUP), so create it even where it grants nothing.
    for group in "${groups[@]}"; do
        if has_group "$group"; then ok "group $group exists"; else run groupadd --system "${prefix_args[@]}" "$group"; fi
    done
    group_list=$(IFS=,; echo "${groups[*]}")
    if ! has_user "$user"; then
        run useradd --system --user-group --home-dir "$state_dir" --no-create-home \
            --shell /usr/sbin/nologin --comment "peercam camera" --groups "$group_list" \
            "${prefix_args[@]}" "$user"
    else
        ok "user $user exists"
        for group in "${groups[@]}"; do
            user_in_group "$user" "$group" || run usermod --append --groups "$group" "${prefix_args[@]}" "$user"
        done
    fi
fi

# --- 3. virtualenv and the peercam package -----------------------------------
source_hash() {
    (cd "$src" && find pyproject.toml camera services hardware -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
package_changed=0
if [ -n "$root" ]; then
    # A venv's scripts hold its absolute path: one made under DIR would not run
    # on the device. Run this script on the device for it.
    skip "virtualenv and pip: --root"
elif [ "$do_venv" -eq 0 ]; then
    skip "virtualenv and pip: --no-venv"
else
    if [ -d "$root$prefix" ]; then ok "$prefix exists"; else run install -d -m 0755 "$root$prefix"; fi
    if [ -x "$root$venv/bin/python" ]; then
        ok "virtualenv $venv exists"
    else
        # --system-site-packages: picamera2, libcamera and numpy come from apt,
        # for Debian's python (not whatever python3 comes first in root's PATH).
        run /usr/bin/python3 -m venv --system-site-packages "$root$venv"
    fi
    stamp=$root$venv/.peercam-source
    want_hash=$(source_hash)
    if [ -r "$stamp" ] && [ "$(cat "$stamp")" = "$want_hash" ]; then
        ok "peercam from $src is installed in $venv"
    else
        package_changed=1
        # A local path is always reinstalled; dependencies only when missing.
        run "$venv/bin/python" -m pip install --quiet "$src"
        echo "$want_hash" > "$work/stamp"
        put_file "$work/stamp" "$stamp" 0644 source-hash || true
    fi
    # "peercam pair", "peercam viewers" over SSH.
    if [ "$(readlink /usr/local/bin/peercam 2>/dev/null)" = "$peercam" ]; then
        ok "/usr/local/bin/peercam -> $peercam"
    else
        run ln -sfn "$peercam" /usr/local/bin/peercam
    fi
fi

# --- 4. configuration ----------------------------------------------------------
if [ -d "$root/etc/peercam" ]; then ok "/etc/peercam exists"; else run install -d -m 0755 "$root/etc/peercam"; fi
# The commented default with rendezvous and source filled in, and the paths
# the unit gives the agent, so that "peercam pair|viewers|status" over SSH
# find the same files and socket.
while IFS= read -r line; do
    case "$line" in
        '# rendezvous = "'*) printf 'rendezvous = "%s"\n' "$rendezvous" ;;
        '# source = "'*) printf 'source = "%s"\n' "$source_name" ;;
        '# state_dir = "'*) printf 'state_dir = "%s"\n' "$state_dir" ;;
        '# control_socket = "'*) printf 'control_socket = "%s"\n' /run/peercam/control.sock ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$src/systemd/camera.toml" > "$work/camera.toml"
if ! put_file "$work/camera.toml" "$config" 0644 systemd/camera.toml once &&
    [ -n "$rendezvous" ]; then
    current=$(sed -n 's/^rendezvous = "\(.*\)"$/\1/p' "$root$config")
    [ "$current" = "$rendezvous" ] ||
        echo "install-pi: note: $config says rendezvous = \"$current\"; edit it to use $rendezvous" >&2
fi
[ "$source_name" = file ] && echo "install-pi: note: source \"file\" needs file = \"...\" in $config" >&2
# The rendezvous checks a camera's signed server name against its own names:
# with --rendezvous URL given, its host[:port] is the name (cameras dial it).
server_name=""
if [ -n "$rendezvous" ]; then
    server_name=${rendezvous#*://}
    server_name=${server_name%%/*}
fi
if [ -n "$server_name" ]; then
    sed "s|^#PEERCAM_SERVER_NAME=.*|PEERCAM_SERVER_NAME=$server_name|" \
        "$src/systemd/rendezvous.env" > "$work/rendezvous.env"
else
    cp "$src/systemd/rendezvous.env" "$work/rendezvous.env"
fi
for name in camera rendezvous stun; do
    from="$src/systemd/$name.env"
    [ "$name" = rendezvous ] && from="$work/rendezvous.env"
    put_file "$from" "/etc/peercam/$name.env" 0644 "systemd/$name.env" once || true
done
# The WHEP gateway's settings (its state directory is the unit's StateDirectory=).
put_file "$src/systemd/whep.toml" /etc/peercam/whep.toml 0644 systemd/whep.toml once || true

# --- 5. state directory --------------------------------------------------------
# systemd (StateDirectory=) owns it from the first start; it must exist now,
# owned by the service user, for the identity step below. Numeric ids: with
# --root the user exists in DIR/etc/passwd, not necessarily here.
owner=""
if [ "$do_user" -eq 1 ] && has_user "$user"; then
    owner=$(user_ids "$user")
elif [ "$do_user" -eq 1 ]; then
    owner=$user:$user  # a dry run: the user is not there yet
fi
if [ ! -d "$root$state_dir" ]; then
    if [ -n "$owner" ]; then
        run install -d -m 0700 -o "${owner%%:*}" -g "${owner#*:}" "$root$state_dir"
    else
        run install -d -m 0700 "$root$state_dir"
    fi
elif [ -n "$owner" ] && [ "$(stat -c %u:%g "$root$state_dir")" != "$owner" ]; then
    run chown -R "$owner" "$root$state_dir"
else
    ok "$state_dir exists"
fi

# --- 6. systemd units ------------------------------------------------------------
units_changed=0
for unit in "${units[@]}"; do
    sed -e "s|/opt/peercam/|$prefix/|g" -e "s|^User=peercam$|User=$user|" \
        -e "s|^Group=peercam$|Group=$user|" "$src/systemd/$unit" > "$work/$unit"
    if put_file "$work/$unit" "/etc/systemd/system/$unit" 0644 "systemd/$unit"; then
        units_changed=1
    fi
done

# --- 7. device identity ---------------------------------------------------------
# Before the service starts: two processes making the first key at once would
# leave the agent with a key that is not the one on disk.
as_user=(runuser -u "$user" -- env "STATE_DIRECTORY=$state_dir")
umask_before=$(umask)
identity=0 new_key=0
if [ -n "$root" ]; then
    skip "identity: --root (on the device: sudo -u $user peercam camera identity --create)"
elif [ "$do_venv" -eq 0 ] && [ ! -x "$peercam" ]; then
    skip "identity: --no-venv and no $peercam"
elif ! has_user "$user" && [ "$dry_run" -eq 0 ]; then
    skip "identity: no user $user (--no-user)"
elif [ -e "$state_dir/device_key.pem" ]; then
    identity=1
    ok "device key $state_dir/device_key.pem exists"
else
    identity=1 new_key=1
    umask 077  # as the unit's UMask=: the key is the service user's alone
    run "${as_user[@]}" "$peercam" camera identity --create --config "$config"
    umask "$umask_before"
fi

# --- 8. enable and start ------------------------------------------------------------
enable=(peercam-camera.service)
[ "$with_rendezvous" -eq 1 ] && enable+=(peercam-rendezvous.service)
[ "$with_stun" -eq 1 ] && enable+=(peercam-stun.service)
[ "$with_whep" -eq 1 ] && enable+=(peercam-whep.service)
if [ "$do_systemctl" -eq 0 ]; then
    skip "systemctl: --no-systemctl"
elif [ "$offline" -eq 1 ]; then
    # No running manager (an image, a chroot, --root): enable on disk only.
    systemctl_root=(--root "${root:-/}")
    for unit in "${enable[@]}"; do
        if systemctl "${systemctl_root[@]}" is-enabled --quiet "$unit" 2>/dev/null; then
            ok "$unit is enabled"
        else
            run systemctl "${systemctl_root[@]}" enable "$unit"
        fi
    done
    skip "daemon-reload and start: systemd is not running here (enabled units start at boot)"
else
    [ "$units_changed" -eq 1 ] && run systemctl daemon-reload
    for unit in "${enable[@]}"; do
        if ! systemctl is-enabled --quiet "$unit"; then
            # --no-block: the camera is READY only once it streams and is registered.
            run systemctl enable --now --no-block "$unit"
        elif ! systemctl is-active --quiet "$unit"; then
            run systemctl start --no-block "$unit"
        elif [ "$units_changed" -eq 1 ] || [ "$package_changed" -eq 1 ]; then
            run systemctl restart --no-block "$unit"
        else
            ok "$unit is enabled and running"
        fi
    done
fi

# --- 9. device ID and pairing --------------------------------------------------------
if [ "$identity" -eq 1 ]; then
    if [ "$dry_run" -eq 0 ]; then
        say "DEVICE $("${as_user[@]}" "$peercam" camera identity --config "$config")"
    fi
    if [ "$new_key" -eq 1 ] || [ "$force_pair" -eq 1 ]; then
        # A one-time pairing window in the state directory; prints the link and its QR code.
        umask 077
        run "${as_user[@]}" "$peercam" pair --config "$config" --ttl 600
        umask "$umask_before"
    else
        say "pair a viewer: sudo -u $user peercam pair"
    fi
fi
if [ "$with_whep" -eq 1 ] && [ "$dry_run" -eq 0 ]; then
    say "WHEP gateway: sudo -u $user peercam whep pair --config /etc/peercam/whep.toml 'LINK'," \
        "then systemctl restart peercam-whep"
fi

# --- Summary --------------------------------------------------------------------------
if [ "$dry_run" -eq 1 ]; then
    say "[dry-run] $changes action(s) above; nothing was changed"
elif [ "$changes" -eq 0 ]; then
    ok "nothing to do: peercam is installed and up to date"
else
    say "done: $changes change(s)"
    [ "$offline" -eq 1 ] || say "status: systemctl status peercam-camera; logs: journalctl -u peercam-camera -f"
fi
