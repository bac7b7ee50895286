#!/usr/bin/env bash
# Build and test the QuPath extension's client core (qupath.ext.segtme.client) without Gradle.
#
# QuPath itself is not available from any package source CI can reach, so CI compiles only the
# client core (no QuPath imports) with javac against Debian's jars, generates the gRPC stubs from
# proto/ with protoc, and runs the JUnit 5 tests with the console launcher. The QuPath layer
# (qupath-extension/src/main/java/qupath/ext/segtme/*.java) is NOT compiled here; users build the
# whole extension with Gradle (see docs/qupath.md).
#
# Every QuPath-free class (qupath.ext.segtme.client.*, i.e. everything the QuPath layer delegates to: tile plan,
# streaming client, target rule + nesting, re-run marker, workflow-step text, settings/token resolution) is
# compiled with -Xlint:all -Werror and tested. Tests:
#   TilePlannerTest          — the tile plan vs tests/data/tile_plan_examples.json (shared with Python)
#   SegTMEClientTest         — the client against an in-process fake gRPC server
#   SegTMEIdsTest            — the re-run marker (object IDs)
#   TargetSelectorTest       — which annotations a run analyses; nesting; recorded selection-free rule
#   RunSettingsTest          — script/GUI options, SEGTME_TOKEN, TLS CA file, one-line errors
#   WorkflowScriptTest       — the Groovy text of the recorded workflow step
#   EndToEndServerTest       — the client against the real Python server (`segtme serve --port 0`, fixture model)
#                              streaming a real image from $SEGTME_DATA_DIR (default ../shared/data)
#   DefaultModelEndToEndTest — the same with the shipped model (`segtme serve --model default`) over an annotation
#                              spanning several tiles (SEGTME_E2E_TILE_SIZE, default 256 working px)
#
# Environment:
#   SEGTME_CMD       command that starts the server (default: <repo>/.venv/bin/segtme)
#   SEGTME_DATA_DIR  shared data root (default: <repo>/../shared/data)
#   CI=true          data-dependent tests FAIL (not skip) when the data or server is missing
#   JAVA_TEST_BUILD  build directory (default: <repo>/qupath-extension/build/ci, outside the sources)
#   JUNIT_ARGS       extra console-launcher arguments, e.g. "--select-class qupath.ext.segtme.client.TilePlannerTest"
#   SEGTME_E2E_TILE_SIZE  tile size (working px) of DefaultModelEndToEndTest (default 256)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXT="$REPO/qupath-extension"
BUILD="${JAVA_TEST_BUILD:-$EXT/build/ci}"
J=/usr/share/java

# --- 1. Debian packages (idempotent: only installs what is missing) ---------------------------
PKGS=(libgrpc-java libnetty-java libperfmark-java libgeronimo-annotation-1.3-spec-java
      libprotobuf-java protobuf-compiler protobuf-compiler-grpc-java-plugin junit5 libgoogle-gson-java libjts-java)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v javac >/dev/null || missing+=(default-jdk-headless)   # any JDK >= 17 will do
if ((${#missing[@]})); then
  echo "java_test: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. classpath -----------------------------------------------------------------------------
jar() {  # first existing jar among the candidates
  for c in "$@"; do [ -f "$J/$c.jar" ] && { echo "$J/$c.jar"; return; }; done
  echo "java_test: missing jar: $*" >&2; exit 1
}
CP_MAIN=""
for j in grpc-api grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub grpc-context protobuf guava \
         perfmark-api error_prone_annotations opencensus-api geronimo-annotation-1.3-spec gson jts-core \
         netty-common netty-buffer netty-transport netty-codec netty-codec-http netty-codec-http2 netty-handler netty-resolver; do
  CP_MAIN="$CP_MAIN:$(jar "$j")"
done
# Debian's guava bundles failureaccess; use the separate jar only if present
[ -f "$J/failureaccess.jar" ] && CP_MAIN="$CP_MAIN:$J/failureaccess.jar"
CP_MAIN="${CP_MAIN#:}"
LAUNCHER="$(jar junit-platform-console-standalone)"

# --- 3. generate stubs (outside the source tree) ----------------------------------------------
rm -rf "$BUILD"
mkdir -p "$BUILD/gen" "$BUILD/classes" "$BUILD/test-classes" "$BUILD/reports"
protoc --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  --java_out="$BUILD/gen" --grpc-java_out="$BUILD/gen" \
  -I "$REPO/proto" "$REPO/proto/segtme/v1/segtme.proto"

# --- 4. compile the client core (and only it) + its tests -------------------------------------
find "$BUILD/gen" -name '*.java' > "$BUILD/main-sources.txt"
find "$EXT/src/main/java/qupath/ext/segtme/client" -name '*.java' >> "$BUILD/main-sources.txt"
if grep -l 'import qupath\.lib\|import qupath\.fx\|import javafx' $(grep '/client/' "$BUILD/main-sources.txt"); then
  echo "java_test: the client core must not import QuPath/JavaFX (files above)" >&2; exit 1
fi
find "$BUILD/gen" -name '*.java' > "$BUILD/gen-sources.txt"
find "$EXT/src/main/java/qupath/ext/segtme/client" -name '*.java' > "$BUILD/core-sources.txt"
javac -nowarn -encoding UTF-8 --release 17 -d "$BUILD/classes" -cp "$CP_MAIN" @"$BUILD/gen-sources.txt"
javac -Xlint:all -Werror -encoding UTF-8 --release 17 -d "$BUILD/classes" -cp "$BUILD/classes:$CP_MAIN" @"$BUILD/core-sources.txt"
echo "java_test: compiled $(wc -l < "$BUILD/gen-sources.txt") generated stub files and $(wc -l < "$BUILD/core-sources.txt") client-core classes"
find "$EXT/src/test/java" -name '*.java' > "$BUILD/test-sources.txt"
javac -encoding UTF-8 --release 17 -d "$BUILD/test-classes" -cp "$BUILD/classes:$CP_MAIN:$LAUNCHER" @"$BUILD/test-sources.txt"

# --- 5. run JUnit 5 ---------------------------------------------------------------------------
export SEGTME_REPO="$REPO"
# shellcheck disable=SC2086
java -Djava.awt.headless=true -jar "$LAUNCHER" \
  --class-path "$BUILD/test-classes:$BUILD/classes:$CP_MAIN" \
  ${JUNIT_ARGS:---scan-class-path "$BUILD/test-classes"} \
  --fail-if-no-tests --disable-banner --details=tree \
  --reports-dir="$BUILD/reports"
