#!/bin/sh
# Builds lambda_fn/_jpegscale.so (the 1/8-scale JPEG decoder, see lambda_fn/jpegscale.py) from the C file
# beside this script. Run by `make install` and by the container image's build stage; usage:
#   sh lambda_fn/build_jpegscale.sh [output path]
# Portable x86-64 code (no -march=native): the library must run on any CPU Lambda may give the image.
set -eu
here=$(dirname "$0")
out=${1:-"$here/_jpegscale.so"}
${CC:-cc} -O2 -fPIC -shared -pthread -Wall -Wextra -Werror -o "$out" "$here/_jpegscale.c"
