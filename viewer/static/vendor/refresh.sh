#!/bin/sh
# Refreshes the vendored elkjs from the npm registry: ./refresh.sh [VERSION] (default: the latest release).
# Needs npm; writes elk-worker.min.js, elkjs-LICENSE.md and the version line of README.md in this folder.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-$(npm view elkjs version)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "elkjs@$version" >/dev/null && tar xzf "elkjs-$version.tgz")
cp "$work/package/lib/elk-worker.min.js" "$here/elk-worker.min.js"
cp "$work/package/LICENSE.md" "$here/elkjs-LICENSE.md"
integrity=$(npm view "elkjs@$version" dist.integrity)
license=$(npm view "elkjs@$version" license)
sha=$(sha256sum "$here/elk-worker.min.js" | cut -d' ' -f1)
sed -i \
  -e "s|^- version: .*|- version: $version|" \
  -e "s|^- licence: .*|- licence: $license (see elkjs-LICENSE.md)|" \
  -e "s|^- tarball integrity: .*|- tarball integrity: $integrity|" \
  -e "s|^- elk-worker.min.js sha256: .*|- elk-worker.min.js sha256: $sha|" \
  "$here/README.md"
echo "elkjs $version vendored in $here"
