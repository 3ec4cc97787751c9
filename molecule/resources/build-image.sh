#!/bin/sh
# Build the local podman image that the molecule scenarios run in: Debian 12 (bookworm) with
# systemd as PID 1 and what Ansible needs. No image registry is reachable here, so the root
# file system comes from debootstrap and becomes an image with `podman import`.
#
# Fast when nothing changed: the image carries the checksum of this script as a label and is
# rebuilt only when that label differs (the recipe changed) or the image is missing.
#
# Usage: molecule/resources/build-image.sh   (as root; needs debootstrap and podman)
# Environment: TESTFLEET_IMAGE (default localhost/testfleet-debian12:latest),
#              DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -eu

image=${TESTFLEET_IMAGE:-localhost/testfleet-debian12:latest}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=systemd-sysv,python3,python3-apt,sudo,ca-certificates,iproute2,procps
recipe=$(sha256sum "$0" | cut -d' ' -f1)

# Scenarios that start together build the image once: the others wait, then find it.
exec 9>"/var/lock/testfleet-image-$(echo "$image" | tr -c 'A-Za-z0-9.\n-' _).lock"
flock 9

current=$(podman image inspect --format '{{ index .Labels "org.testfleet.recipe" }}' \
  "$image" 2>/dev/null || true)
if [ "$current" = "$recipe" ]; then
  echo "$image is up to date"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/testfleet-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT INT TERM

debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror"

# Release, updates and security suites, like an installed Debian 12.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Per-container identity is created at boot (systemd) or by podman (hostname).
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/hostname" "$rootfs/var/cache/apt/archives/"*.deb
rm -rf "$rootfs/var/lib/apt/lists/"*
# No package lists: date the lists directory back to 1970 so that apt's cache_valid_time (the
# Ansible apt module compares it with this mtime) refreshes them instead of trusting them.
touch -d @0 "$rootfs/var/lib/apt/lists"

tar -C "$rootfs" --numeric-owner -cf - . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change "LABEL org.testfleet.recipe=$recipe" \
  - "$image"
# Drop the images this script built before and that lost their tag, unless a container
# still uses them (a later build retries).
podman images --quiet --filter dangling=true --filter label=org.testfleet.recipe |
  xargs -r podman rmi >/dev/null 2>&1 || true
echo "built $image"
