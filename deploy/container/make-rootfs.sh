#!/bin/sh
# Assembles the root filesystem of the Nexus image in OUT: the given binaries in /usr/bin,
# the shared libraries they load (found with ldd, so the image needs no distribution
# base), the CA bundle for https:// control planes, and an unprivileged user `nexus`
# (65532) owning /var/lib/nexus. No shell and no package manager end up in it.
#
#   make-rootfs.sh OUT BINARY...
#
# Used by the Containerfile's build stage and, for images of already built binaries, by
# scripts/test-deploy (docs/deploy.md, "Container image").
set -eu
out=$1
shift
mkdir -p "$out/usr/bin" "$out/etc/ssl/certs" "$out/etc/nexus" "$out/var/lib/nexus" "$out/tmp"
for bin in "$@"; do
  cp "$bin" "$out/usr/bin/"
  # Debug info is for profiling on a build machine, not for an image (symbols stay, so
  # backtraces keep their function names). NEXUS_STRIP=0 keeps it.
  if [ "${NEXUS_STRIP:-1}" != 0 ] && command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/usr/bin/$(basename "$bin")"
  fi
  # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
  ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    # Follow symlinks: the image gets the file under the name the loader asks for.
    cp -L "$lib" "$out$lib"
  done
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnexus:x:65532:65532:nexus:/var/lib/nexus:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nnexus:x:65532:\n' > "$out/etc/group"
chmod 1777 "$out/tmp"
