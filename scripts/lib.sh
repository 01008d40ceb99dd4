# Shared by scripts/test and scripts/demo: make .venv from nothing and keep it in step with
# setup.cfg. Sourced, not run.

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "Pitlink needs Python 3.11 or newer (apt-get install python3)" >&2
    return 1
}

# apt_install PKG...: install Debian packages that are missing (as root, or through sudo).
# Servers the tests start on their own (nginx, Prometheus, Redis) are installed without being
# started, and are not left enabled as system services: the tests run their own copies on
# loopback ports, and a developer's machine should not gain a web server at boot.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    local policy=/usr/sbin/policy-rc.d placed="" unit
    if [ ! -e "$policy" ]; then
        # Debian's invoke-rc.d asks this file whether a package may start its service: no.
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy"
        placed=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || status=$?
    if [ -n "$placed" ]; then $sudo rm -f "$policy"; fi
    if [ -d /run/systemd/system ]; then
        for pkg in "${missing[@]}"; do
            case "$pkg" in
                nginx-light | nginx) unit=nginx ;;
                prometheus) unit=prometheus ;;
                redis-server) unit=redis-server ;;
                *) continue ;;
            esac
            $sudo systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
    return $status
}

# extras_set LIST...: the comma-separated lists as one sorted comma-separated set.
extras_set() { printf '%s\n' "$@" | tr ', ' '\n\n' | sed '/^$/d' | sort -u | paste -sd, -; }

# ensure_venv EXTRAS: create .venv if needed and make sure the project is installed with at
# least those extras (comma-separated, e.g. "test,build"). The stamp records the hash of
# setup.cfg and pyproject.toml and the set of extras installed so far: asking for a subset of
# them does nothing, so scripts that ask for different extras do not reinstall each other's.
# When setup.cfg changed or an extra is missing, the union of old and new extras is installed.
ensure_venv() {
    local extras="$1" root python stamp hash have="" union spec
    root="$(repo_root)"
    python="$(pick_python)" || return 1
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        local minor
        minor="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install "python${minor}-venv" || apt_install python3-venv
    fi
    if [ ! -x "$root/.venv/bin/python" ]; then
        echo "creating $root/.venv" >&2
        "$python" -m venv "$root/.venv"
    fi
    stamp="$root/.venv/.pitlink-installed"
    hash="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    # The stamp is "<hash> <extra>,<extra>,...".
    [ -f "$stamp" ] && have="$(extras_set "$(cut -s -d' ' -f2 "$stamp")")"
    union="$(extras_set "$have" "$extras")"
    spec="$root"
    [ -n "$union" ] && spec="$root[$union]"
    if [ ! -f "$stamp" ] || [ "$(cut -d' ' -f1 "$stamp")" != "$hash" ] || [ "$union" != "$have" ]; then
        echo "installing Pitlink and its dependencies into .venv (log: .venv/pip.log)" >&2
        if ! { "$root/.venv/bin/python" -m pip install --upgrade pip &&
            "$root/.venv/bin/python" -m pip install -e "$spec"; } >"$root/.venv/pip.log" 2>&1; then
            tail -n 30 "$root/.venv/pip.log" >&2
            echo "installing the dependencies failed; the whole log is in .venv/pip.log" >&2
            return 1
        fi
        echo "$hash $union" >"$stamp"
    fi
}
