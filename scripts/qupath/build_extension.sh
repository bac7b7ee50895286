#!/usr/bin/env bash
# Build the SegTME QuPath extension jar against the jars of an installed QuPath 0.6 — no Gradle needed.
#
#   bash scripts/qupath/build_extension.sh /path/to/QuPath            # Linux: the folder holding lib/app
#   bash scripts/qupath/build_extension.sh /Applications/QuPath-0.6.0.app
#   bash scripts/qupath/build_extension.sh "C:/Program Files/QuPath-0.6.0"   (Git Bash)
#   -> build/qupath-extension-segtme-<version>.jar : drag it onto QuPath and restart QuPath.
#
# What it needs (all checked before anything is built, with a one-line error if missing):
#   * a JDK 21 or newer (javac + jar: $JAVA_HOME/bin, else PATH). QuPath's own bundled Java has no compiler.
#   * the QuPath 0.6 installation (its qupath-core / qupath-gui-fx / qupath-fxtras / JavaFX / Gson / JTS / Guava
#     / SLF4J jars are compiled against and NOT bundled).
#   * the gRPC client and protobuf runtime that the jar bundles (QuPath does not ship them), and the protoc +
#     protoc-gen-grpc-java code generators, EITHER
#       - downloaded from Maven Central with curl (internet; each file checked against Central's .sha1), or
#       - offline: --deps DIR (every *.jar in DIR is bundled) with PROTOC=/path/protoc and
#         GRPC_JAVA_PLUGIN=/path/protoc-gen-grpc-java.
#   * bash, find, unzip, sha1sum or shasum.
#
# Options:
#   --deps DIR     bundle the jars in DIR instead of downloading gRPC/protobuf
#   --out DIR      output folder (default: <repo>/build)
#   --work DIR     scratch folder (default: <out>/extension-build, wiped first)
# Environment: JAVA_HOME, PROTOC, GRPC_JAVA_PLUGIN, SEGTME_VERSION (default from gradle.properties),
#   MAVEN_CENTRAL (default https://repo1.maven.org/maven2).
#
# Differences from the Gradle build (./gradlew shadowJar, needs Gradle 8 and internet): the same sources and the
# same bundled libraries, but protobuf is not relocated (shadowJar relocates it to qupath.ext.segtme.shaded).
set -euo pipefail

die() { echo "build_extension: error: $*" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
QUPATH="" DEPS="" OUT="$REPO/build" WORK=""
while (($#)); do
  case "$1" in
    --deps) DEPS="${2:?--deps needs a folder}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --work) WORK="${2:?--work needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$QUPATH" ] || die "one QuPath folder only (got '$QUPATH' and '$1')"; QUPATH="$1"; shift ;;
  esac
done
[ -n "$QUPATH" ] || die "give the QuPath installation folder, e.g. build_extension.sh /path/to/QuPath (see --help)"
[ -d "$QUPATH" ] || die "QuPath folder not found: $QUPATH"
WORK="${WORK:-$OUT/extension-build}"
VERSION="${SEGTME_VERSION:-$(sed -n 's/^segtmeVersion=//p' "$REPO/gradle.properties")}"
CENTRAL="${MAVEN_CENTRAL:-https://repo1.maven.org/maven2}"
GRPC_V="$(sed -n 's/^grpcVersion=//p' "$REPO/gradle.properties")"
PROTOBUF_V="$(sed -n 's/^protobufVersion=//p' "$REPO/gradle.properties")"

# --- 1. JDK >= 21 --------------------------------------------------------------------------------
JAVAC="${JAVA_HOME:+$JAVA_HOME/bin/}javac"; JAR="${JAVA_HOME:+$JAVA_HOME/bin/}jar"
command -v "$JAVAC" >/dev/null || die "javac not found: install a JDK 21+ and set JAVA_HOME (QuPath's bundled Java has no compiler)"
JV="$("$JAVAC" -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')"
[ -n "$JV" ] && [ "$JV" -ge 21 ] || die "javac $JV found, QuPath 0.6 needs JDK 21 or newer (set JAVA_HOME)"
command -v "$JAR" >/dev/null || die "jar not found next to javac ($JAR)"
command -v unzip >/dev/null || die "unzip not found"

# --- 2. the installed QuPath's jars ---------------------------------------------------------------
CORE_JAR="$(find "$QUPATH" -name 'qupath-core-[0-9]*.jar' -not -name '*processing*' 2>/dev/null | head -n 1)"
[ -n "$CORE_JAR" ] || die "no qupath-core-*.jar under $QUPATH (expected QuPath/lib/app, QuPath.app/Contents/app or QuPath/app)"
APP="$(dirname "$CORE_JAR")"
QV="$(basename "$CORE_JAR" .jar)"; QV="${QV#qupath-core-}"
case "$QV" in 0.6.*) ;; *) die "QuPath $QV found in $APP; this extension is built for QuPath 0.6" ;; esac
for need in qupath-gui-fx qupath-fxtras gson jts-core guava slf4j-api javafx-base javafx-controls javafx-graphics; do
  ls "$APP"/$need-*.jar >/dev/null 2>&1 || die "$need-*.jar not found in $APP (is this a complete QuPath $QV installation?)"
done
QP_CP="$(find "$APP" -maxdepth 1 -name '*.jar' | sort | tr '\n' ':')"

# --- 3. gRPC/protobuf jars and code generators -----------------------------------------------------
rm -rf "$WORK"; mkdir -p "$WORK/deps" "$WORK/gen" "$WORK/classes" "$OUT"
sha1() { if command -v sha1sum >/dev/null; then sha1sum "$1" | cut -d' ' -f1; else shasum -a 1 "$1" | cut -d' ' -f1; fi; }
fetch() {  # fetch DIR GROUP ARTIFACT VERSION [CLASSIFIER.EXT] -> prints the file; checked against Central's .sha1
  local dir="$1" g="${2//.//}" a="$3" v="$4" name
  name="$a-$v${5:+-$5}"; [ -n "${5:-}" ] || name="$name.jar"
  local url="$CENTRAL/$g/$a/$v/$name" want
  command -v curl >/dev/null || die "curl not found (or build offline: --deps DIR with PROTOC and GRPC_JAVA_PLUGIN)"
  curl -fsSL -o "$dir/$name" "$url" || die "cannot download $url (offline? use --deps DIR with PROTOC and GRPC_JAVA_PLUGIN)"
  want="$(curl -fsSL "$url.sha1" | cut -c1-40)" || die "cannot download $url.sha1"
  [ "$(sha1 "$dir/$name")" = "$want" ] || die "checksum mismatch for $url"
  echo "$dir/$name"
}
COMPILE_ONLY=""
if [ -n "$DEPS" ]; then
  [ -d "$DEPS" ] || die "--deps folder not found: $DEPS"
  ls "$DEPS"/*.jar >/dev/null 2>&1 || die "no jars in --deps folder $DEPS"
  [ -n "${PROTOC:-}" ] && [ -n "${GRPC_JAVA_PLUGIN:-}" ] || die "with --deps also set PROTOC and GRPC_JAVA_PLUGIN (the code generators)"
  cp "$DEPS"/*.jar "$WORK/deps/"
else
  for spec in "io.grpc grpc-api $GRPC_V" "io.grpc grpc-core $GRPC_V" "io.grpc grpc-netty-shaded $GRPC_V" \
              "io.grpc grpc-protobuf $GRPC_V" "io.grpc grpc-protobuf-lite $GRPC_V" "io.grpc grpc-stub $GRPC_V" \
              "io.grpc grpc-util $GRPC_V" "io.grpc grpc-context $GRPC_V" "com.google.protobuf protobuf-java $PROTOBUF_V" \
              "io.perfmark perfmark-api 0.27.0"; do
    # shellcheck disable=SC2086
    fetch "$WORK/deps" $spec >/dev/null
  done
  mkdir -p "$WORK/tools"
  COMPILE_ONLY=":$(fetch "$WORK/tools" javax.annotation javax.annotation-api 1.3.2)"  # @Generated in the stubs (source retention)
  os="$(uname -s)"; arch="$(uname -m)"
  case "$os" in Linux) os=linux ;; Darwin) os=osx ;; MINGW*|MSYS*|CYGWIN*) os=windows ;; *) die "unknown OS $os: set PROTOC and GRPC_JAVA_PLUGIN" ;; esac
  case "$arch" in x86_64|amd64) arch=x86_64 ;; arm64|aarch64) arch=aarch_64 ;; *) die "unknown CPU $arch: set PROTOC and GRPC_JAVA_PLUGIN" ;; esac
  [ -n "${PROTOC:-}" ] || { PROTOC="$(fetch "$WORK/tools" com.google.protobuf protoc "$PROTOBUF_V" "$os-$arch.exe")"; chmod +x "$PROTOC"; }
  [ -n "${GRPC_JAVA_PLUGIN:-}" ] || { GRPC_JAVA_PLUGIN="$(fetch "$WORK/tools" io.grpc protoc-gen-grpc-java "$GRPC_V" "$os-$arch.exe")"; chmod +x "$GRPC_JAVA_PLUGIN"; }
fi
[ -x "$PROTOC" ] || die "protoc not executable: $PROTOC"
[ -x "$GRPC_JAVA_PLUGIN" ] || die "protoc-gen-grpc-java not executable: $GRPC_JAVA_PLUGIN"
DEP_CP="$(find "$WORK/deps" -name '*.jar' | sort | tr '\n' ':')"

# --- 4. stubs, compile (client core + QuPath layer), bundle ----------------------------------------
"$PROTOC" --plugin=protoc-gen-grpc-java="$GRPC_JAVA_PLUGIN" --java_out="$WORK/gen" --grpc-java_out="$WORK/gen" \
  -I "$REPO/proto" "$REPO/proto/segtme/v1/segtme.proto"
{ find "$WORK/gen" -name '*.java'; find "$REPO/qupath-extension/src/main/java" -name '*.java'; } > "$WORK/sources.txt"
"$JAVAC" --release 21 -encoding UTF-8 -nowarn -d "$WORK/classes" -cp "$DEP_CP$QP_CP$COMPILE_ONLY" @"$WORK/sources.txt"
cp -R "$REPO/qupath-extension/src/main/resources/." "$WORK/classes/"
# bundle the dependencies; merge their META-INF/services (gRPC finds its transport and resolvers there)
mkdir -p "$WORK/unpacked" "$WORK/services"
for j in "$WORK"/deps/*.jar; do
  d="$WORK/unpacked/$(basename "$j" .jar)"; mkdir -p "$d"; unzip -q -o "$j" -d "$d"
  if [ -d "$d/META-INF/services" ]; then
    for s in "$d"/META-INF/services/*; do [ -f "$s" ] && { cat "$s"; echo; } >> "$WORK/services/$(basename "$s")"; done
  fi
  rm -rf "$d/META-INF"; rm -f "$d/module-info.class"
  cp -R "$d/." "$WORK/classes/"
done
mkdir -p "$WORK/classes/META-INF/services"
for s in "$WORK"/services/*; do [ -f "$s" ] && { cat "$s"; } >> "$WORK/classes/META-INF/services/$(basename "$s")"; done
printf 'Implementation-Title: qupath-extension-segtme\nImplementation-Version: %s\nAutomatic-Module-Name: io.github.segtme.qupath\n' \
  "$VERSION" > "$WORK/manifest.txt"
JARFILE="$OUT/qupath-extension-segtme-$VERSION.jar"
rm -f "$JARFILE.tmp"
"$JAR" --create --file "$JARFILE.tmp" --manifest "$WORK/manifest.txt" -C "$WORK/classes" .
mv "$JARFILE.tmp" "$JARFILE"
echo "build_extension: built $JARFILE against QuPath $QV ($APP) with javac $JV"
echo "build_extension: install: drag it onto the QuPath window (or copy it into QuPath's extensions folder), restart QuPath"
