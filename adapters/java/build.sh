#!/usr/bin/env bash
# Builds the Java adapter jar with plain javac against Debian's grpc-java, protobuf-java and
# netty jars (Maven Central is not needed): generates the nexus.v1 classes from
# proto/nexus/v1/gateway.proto with protoc and /usr/bin/grpc_java_plugin, compiles them with
# the adapter, and writes <out>/nexus-client.jar plus <out>/classpath (the runtime classpath,
# jar included).
#
# Usage: adapters/java/build.sh [OUT_DIR]    (default: $NEXUS_CACHE/java, ~/.cache/nexus/java)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-${NEXUS_CACHE:-$HOME/.cache/nexus}/java}"
J=/usr/share/java

deps=(grpc-api grpc-core grpc-netty grpc-stub grpc-protobuf grpc-protobuf-lite grpc-context protobuf guava
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler netty-resolver
  netty-transport netty-transport-native-unix-common netty-handler-proxy netty-codec-socks
  perfmark-api gson geronimo-annotation-1.3-spec error-prone-annotations jsr305)
cp=""
for d in "${deps[@]}"; do
  [ -f "$J/$d.jar" ] || { echo "missing $J/$d.jar (install the Debian packages listed in adapters/java/README.md)" >&2; exit 1; }
  cp="$cp${cp:+:}$J/$d.jar"
done

rm -rf "$out/gen" "$out/classes"
mkdir -p "$out/gen" "$out/classes"
protoc --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
  --java_out="$out/gen" --grpc-java_out="$out/gen" -I "$root/proto" "$root/proto/nexus/v1/gateway.proto"
# shellcheck disable=SC2046
javac -nowarn -encoding UTF-8 --release 17 -d "$out/classes" -cp "$cp" \
  $(find "$out/gen" "$here/src/main/java" -name '*.java') 2>&1 | { grep -v '^Note:' || true; }
jar --create --file "$out/nexus-client.jar" -C "$out/classes" .
echo "$out/nexus-client.jar:$cp" > "$out/classpath"
# The unit tests (a plain main) need package access, so they compile against the classes.
rm -rf "$out/test-classes" && mkdir -p "$out/test-classes"
javac -nowarn -encoding UTF-8 --release 17 -d "$out/test-classes" -cp "$out/classes:$cp" \
  $(find "$here/src/test/java" -name '*.java')
echo "built $out/nexus-client.jar"
