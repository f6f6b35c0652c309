#!/usr/bin/env bash
# Makes the images the container suite (tests/container) runs, each only when
# it is missing or its inputs changed, and prints them for the suite:
#   BEARERD_IMAGE=localhost/bearerd:check-HASH        deploy/Containerfile
#   BEARERD_APP_IMAGE=localhost/bearerd-check-app:check-HASH
#                                       tests/container/app.Containerfile (curl)
# No image registry is needed: the base images docker.io/library/debian:bookworm-slim
# and :bookworm are made here with debootstrap from the Debian mirror apt uses,
# and the tarball is kept in $BEARERD_CHECK_CACHE (/var/cache/bearerd-check).
# The bearerd image's tag is a hash of the Containerfile, every file its COPY
# lines take from the source tree, and the base images: unchanged inputs, no
# rebuild.  Needs root, podman, runc, catatonit, debootstrap (scripts/check
# installs them).  The build stages reach Debian's archive (podman build
# --network host); nothing else leaves the machine.
#
# Exit status: 0 the images are there; 1 an image failed to build (a defect:
# the suite fails); 2 images cannot be made on this machine (the suite skips,
# with the reason on stderr).
set -uo pipefail
cd "$(dirname "$0")/../.."
read -r -a podman <<<"${PODMAN:-podman --runtime runc}"
cache=${BEARERD_CHECK_CACHE:-/var/cache/bearerd-check}
suite=bookworm
base=docker.io/library/debian:$suite-slim

cannot() {
	echo "container images: $*" >&2
	exit 2
}
say() { echo "container images: $*" >&2; }

[ "$(id -u)" -eq 0 ] || cannot "not root (podman here runs rootful)"
command -v "${podman[0]}" >/dev/null || cannot "${podman[0]} is not installed"

# podman's default NOFILE and NPROC limits for containers are above this
# machine's hard limits, and every container start fails; an empty
# default_ulimits keeps the limits podman itself runs with.  Edits only that
# key of [containers], keeps everything else in the file.
containers_conf=${CONTAINERS_CONF_EDIT:-/etc/containers/containers.conf}
/usr/bin/python3 - "$containers_conf" <<'PY' || cannot "cannot edit $containers_conf"
import os, re, sys
path = sys.argv[1]
try:
    lines = open(path).read().splitlines()
except FileNotFoundError:
    lines = []
want = "default_ulimits = []"
header = re.compile(r"\s*\[\s*containers\s*\]\s*(#.*)?$")
out, i, done = [], 0, False
while i < len(lines):
    line = lines[i]
    out.append(line)
    i += 1
    if done or not header.match(line):
        continue
    # inside [containers]: drop any default_ulimits (an array may span lines)
    body = []
    while i < len(lines) and not re.match(r"\s*\[", lines[i]):
        if re.match(r"\s*default_ulimits\s*=", lines[i]):
            depth = lines[i].count("[") - lines[i].count("]")
            i += 1
            while depth > 0 and i < len(lines):
                depth += lines[i].count("[") - lines[i].count("]")
                i += 1
            continue
        body.append(lines[i])
        i += 1
    out += [want] + body
    done = True
if not done:
    out += ([""] if out else []) + ["[containers]", want]
if out != lines:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(path + ".tmp", path)
    print(f"container images: {path}: [containers] {want}", file=sys.stderr)
PY

err=$("${podman[@]}" info 2>&1 >/dev/null) || cannot "podman cannot run here: ${err##*$'\n'}"
mkdir -p "$cache" || cannot "cannot create $cache"

# The Debian archive apt uses here (a mirror, a proxy's address): the base
# images' sources, so their apt-get reaches what the host's reaches.
mirror() { # SUITE DEFAULT
	local uri
	uri=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
		awk -v s="$1" '$1 == s { print $2; exit }')
	echo "${uri:-$2}"
}

# debian:bookworm-slim and :bookworm from debootstrap --variant=minbase, as
# the official images are: deb822 sources for bookworm, -updates, -security.
base_images() {
	local tarball=$cache/debian-$suite-minbase.tar root main security
	if ! "${podman[@]}" image exists "$base"; then
		if [ ! -s "$tarball" ]; then
			command -v debootstrap >/dev/null || return 1
			main=$(mirror "$suite" http://deb.debian.org/debian/)
			security=$(mirror "$suite-security" http://deb.debian.org/debian-security/)
			say "debootstrap --variant=minbase $suite from $main (once; cached in $tarball)"
			root=$(mktemp -d "$cache/rootfs.XXXXXX") || return 1
			if ! debootstrap --variant=minbase "$suite" "$root" "$main" >"$cache/debootstrap.log" 2>&1; then
				tail -5 "$cache/debootstrap.log" >&2
				rm -rf "$root"
				return 1
			fi
			rm -f "$root"/var/cache/apt/archives/*.deb "$root/etc/apt/sources.list"
			rm -rf "$root"/var/lib/apt/lists/*
			cat >"$root/etc/apt/sources.list.d/debian.sources" <<-EOF
				Types: deb
				URIs: ${main%/}
				Suites: $suite $suite-updates
				Components: main
				Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

				Types: deb
				URIs: ${security%/}
				Suites: $suite-security
				Components: main
				Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
			EOF
			tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
			local rc=$?
			rm -rf "$root"
			[ "$rc" -eq 0 ] || return 1
		fi
		say "podman import $tarball as $base"
		"${podman[@]}" import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change 'CMD ["bash"]' "$tarball" "$base" >/dev/null || return 1
	fi
	"${podman[@]}" image exists "docker.io/library/debian:$suite" ||
		"${podman[@]}" tag "$base" "docker.io/library/debian:$suite"
}
base_images || cannot "no $base base image (debootstrap or podman import failed; see $cache/debootstrap.log)"

# hash FILE...: one digest over the files (directories: every file in them),
# their names, and the base images' ids
hash_inputs() {
	{
		find "$@" -type f -print0 | sort -z | xargs -0 sha256sum
		"${podman[@]}" image inspect --format '{{.Id}}' "$base" "docker.io/library/debian:$suite"
	} | sha256sum | cut -c1-16
}

# image NAME CONTAINERFILE CONTEXT INPUT...: builds NAME:check-HASH unless it
# exists, removes the older NAME:check-* tags, prints the tag
image() {
	local name=$1 file=$2 context=$3 tag log
	shift 3
	tag=$name:check-$(hash_inputs "$file" "$@") || return 1
	if ! "${podman[@]}" image exists "$tag"; then
		log=$cache/build-$(basename "$name").log
		say "podman build $file -> $tag (log: $log)"
		if ! "${podman[@]}" build --network host --format docker -f "$file" -t "$tag" "$context" >"$log" 2>&1; then
			tail -30 "$log" >&2
			return 1
		fi
		"${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' "$name" |
			grep -Fxv "$tag" | grep ":check-" | xargs -r "${podman[@]}" rmi >/dev/null 2>&1
	fi
	echo "$tag"
}

# what deploy/Containerfile copies from the source tree: the sources of its
# COPY lines without --from (options and the destination left out)
copied=$(awk '$1 == "COPY" && !/--from/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' \
	deploy/Containerfile)
# shellcheck disable=SC2086 # paths without spaces
bearerd=$(image localhost/bearerd deploy/Containerfile . $copied) || exit 1
app=$(image localhost/bearerd-check-app tests/container/app.Containerfile tests/container) || exit 1
echo "BEARERD_IMAGE=$bearerd"
echo "BEARERD_APP_IMAGE=$app"
