#!/bin/sh
# Build the release tarball into $1: byte-compiled sources plus a launcher.
set -eu
out="${1:?usage: build.sh OUT_DIR}"
version="$(python3 -c 'import wordcount; print(wordcount.VERSION)')"
stage="$(mktemp -d)"
mkdir -p "$stage/wordcount-$version/bin"
cp wordcount.py README.md "$stage/wordcount-$version/"
python3 -m py_compile "$stage/wordcount-$version/wordcount.py"
cat > "$stage/wordcount-$version/bin/wordcount" <<'LAUNCHER'
#!/bin/sh
exec python3 "$(dirname "$0")/../wordcount.py" "$@"
LAUNCHER
chmod +x "$stage/wordcount-$version/bin/wordcount"
mkdir -p "$out"
tar -C "$stage" -czf "$out/wordcount-$version.tar.gz" "wordcount-$version"
echo "built $out/wordcount-$version.tar.gz"
