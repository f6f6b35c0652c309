# Sourced by scripts/check, scripts/demo and tests/bench: installs the Debian
# packages a step needs when any is missing (apt-get, as root).
# usage: need_packages PKG...
need_packages() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2
		return 1
	fi
	echo "installing: ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 &&
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

BUILD_PACKAGES=(gcc libc6-dev meson ninja-build pkg-config libevent-dev libcurl4-openssl-dev
	libjsmn-dev libssl-dev libinih-dev libcmocka-dev libsystemd-dev)

# meson_dir DIR [-Dname=value...]: a build directory configured with these
# options.  A new DIR is set up with them.  An existing one (scripts/demo's, or
# one set up by hand, maybe before scdoc or libsystemd-dev was installed) gets
# `meson configure` for each option whose value differs, so the next ninja
# reconfigures and looks again for what the first setup did not find: reusing
# it as it is would silently build without the man pages.  Needs python3.
meson_dir() {
	local dir=$1 differ
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@"
		return
	fi
	differ=$(meson introspect --buildoptions "$dir" | python3 -c '
import json, sys
have = {}
for o in json.load(sys.stdin):
    v = o["value"]
    if isinstance(v, bool):
        v = "true" if v else "false"
    elif isinstance(v, list):
        v = ",".join(map(str, v))
    have[o["name"]] = str(v)
for arg in sys.argv[1:]:
    name, _, value = arg.removeprefix("-D").partition("=")
    if have.get(name) != value:
        print(arg)
' "$@") || return
	[ -z "$differ" ] && return 0
	echo "reconfiguring $dir:" $differ >&2
	# shellcheck disable=SC2086 # one option per line, none with spaces
	meson configure "$dir" $differ
}
