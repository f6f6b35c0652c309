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
