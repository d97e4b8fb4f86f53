#!/bin/sh
# Builds lambda_fn/_jpegscale.so (the 1/8-scale JPEG decoder, see lambda_fn/jpegscale.py) from the C file
# beside this script. Run by `make install` and by the container image's build stage; usage:
#   sh lambda_fn/build_jpegscale.sh [output path]
# Portable x86-64 code (no -march=native): the library must run on any CPU Lambda may give the image.
# The library carries the sha256 of the source it was built from; jpegscale.py refuses one built from
# another version of it (a stale build after a pull), so its ctypes signature always matches.
set -eu
here=$(dirname "$0")
out=${1:-"$here/_jpegscale.so"}
source_sha256=$( (sha256sum "$here/_jpegscale.c" 2>/dev/null || shasum -a 256 "$here/_jpegscale.c") | cut -d' ' -f1)
${CC:-cc} -O2 -fPIC -shared -pthread -Wall -Wextra -Werror -DJS_SOURCE_SHA256="\"$source_sha256\"" \
    -o "$out" "$here/_jpegscale.c"
