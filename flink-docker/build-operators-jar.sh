#!/usr/bin/env bash
# Compile the job's Java operators (operators/java) into one jar, with their resources
# (operators/java/META-INF: the service files Flink reads): the one way flowlearn builds
# it, used both by the local stack (flowlearn/stack.py) and by the job image
# (flink-docker/Dockerfile), so the tests exercise the same step the image build runs.
#
# usage: build-operators-jar.sh FLINK_LIB OUTPUT_JAR
#   FLINK_LIB   a folder of Flink's jars to compile against (flink-dist-*.jar in it)
#   OUTPUT_JAR  the jar to write (written to a temporary file first, then moved into place)
# environment:
#   JAVAC, JAR  the JDK's tools (default javac, jar)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sources="$here/../operators/java"
javac=${JAVAC:-javac}
jar=${JAR:-jar}

die() { echo "build-operators-jar.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: build-operators-jar.sh FLINK_LIB OUTPUT_JAR"
lib=$1
out=$2
compgen -G "$lib/flink-dist*.jar" >/dev/null || die "no flink-dist jar in $lib"
command -v "$javac" >/dev/null || die "'$javac' not found: install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)"
command -v "$jar" >/dev/null || die "'$jar' not found: install a JDK 17"
mapfile -t files < <(find "$sources" -name '*.java' | sort)
[ ${#files[@]} -gt 0 ] || die "no Java sources under $sources"

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.build-operators.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Release 11: the oldest Java Flink 2.x runs on.
"$javac" --release 11 -Xlint:all -Werror -cp "$lib/*" -d "$work/classes" "${files[@]}" >&2 \
  || die "javac failed"
cp -R "$sources/META-INF" "$work/classes/"
# The same jar is the TaskManagers' Java agent (-javaagent:, PythonRunnerWarmup).
printf 'Premain-Class: dev.flowlearn.flink.PythonRunnerWarmup\n' > "$work/manifest.txt"
"$jar" --create --file "$work/operators.jar" --manifest "$work/manifest.txt" -C "$work/classes" . \
  || die "jar failed"
mv "$work/operators.jar" "$out"
