#!/bin/bash
# Checks that every C file follows the checked-in .clang-format.
set -euo pipefail
src=${AUTHD_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 77; }
cd "$src"
files=$(find master worker shared tests -name '*.[ch]' | sort)
clang-format --dry-run --Werror $files
echo "format ok: $(echo "$files" | wc -l) files"
