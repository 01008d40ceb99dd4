# shellcheck shell=bash
# Read pitlink.conf from bash the way the agent reads it (wire/settings.py parse_conf), without
# ever running it: the file sits on the FAT boot partition and is edited by hand on whatever
# laptop is at hand, so it may carry Windows line endings, a UTF-8 byte order mark (Notepad's
# "UTF-8 with BOM") or anything else. `source`-ing it would run whatever it holds as root.
#
# Sourced by the boot scripts beside it. After `conf_load FILE`, CONF[KEY] holds each value:
#   - `#` at the start of a line (after blanks) makes a comment; blank lines are skipped;
#   - KEY=VALUE splits at the first `=`; blanks around key and value are dropped;
#   - keys are upper-cased and `-` becomes `_` (as the agent does);
#   - one pair of matching quotes around the value is removed ('x' or "x"), nothing else;
#   - a later line for the same key wins.
# Lines that are not KEY=VALUE are reported (conf_warn) and skipped: the agent shows them on
# the status page, and the network must come up anyway.

declare -gA CONF=()

# Only this much of the file is read: a settings file is a few lines, and a huge file put
# there by mistake must not stall the boot.
CONF_MAX_BYTES=65536

conf_warn() { echo "pitlink.conf: $*" >&2; }

# _trim VALUE: VALUE without leading and trailing blanks (space, tab, CR, ...).
_trim() {
    local s="$1"
    s="${s#"${s%%[![:space:]]*}"}"
    s="${s%"${s##*[![:space:]]}"}"
    printf '%s' "$s"
}

conf_load() {
    local file="$1" text line key value number=0 first last
    CONF=()
    if [ ! -r "$file" ]; then
        return 1
    fi
    # Bytes, not characters: the BOM is three bytes and keys are plain ASCII.
    local LC_ALL=C
    # Command substitution drops NUL bytes (bash says so on stderr) and trailing newlines.
    text="$(head -c "$CONF_MAX_BYTES" -- "$file" 2>/dev/null)"
    text="${text#$'\xef\xbb\xbf'}"
    # Windows (CRLF) and old Mac (CR) line endings both become plain newlines.
    text="${text//$'\r\n'/$'\n'}"
    text="${text//$'\r'/$'\n'}"
    while IFS= read -r line; do
        number=$((number + 1))
        line="$(_trim "$line")"
        case "$line" in
        '' | '#'*) continue ;;
        *=*) ;;
        *)
            conf_warn "line $number is not KEY=VALUE; skipped"
            continue
            ;;
        esac
        key="$(_trim "${line%%=*}")"
        value="$(_trim "${line#*=}")"
        key="${key^^}"
        key="${key//-/_}"
        if [[ ! "$key" =~ ^[A-Z0-9_]+$ ]]; then
            conf_warn "line $number: '${key:0:40}' is not a setting name; skipped"
            continue
        fi
        if [ "${#value}" -ge 2 ]; then
            first="${value:0:1}"
            last="${value: -1}"
            if [ "$first" = "$last" ] && { [ "$first" = '"' ] || [ "$first" = "'" ]; }; then
                value="${value:1:${#value}-2}"
            fi
        fi
        CONF["$key"]="$value"
    done <<<"$text"
    return 0
}

# conf_get KEY: the value of KEY, or nothing.
conf_get() { printf '%s' "${CONF[$1]-}"; }
