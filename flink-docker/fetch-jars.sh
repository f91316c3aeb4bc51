#!/usr/bin/env bash
# Fetch a Maven artifact named in conf/versions.py into a folder: the one way flowlearn gets the
# Flink Kafka connector jar (and zstd-jni, the zstd codec of its client), used both by the local
# stack (flowlearn/devstack/jars.py) and by the job image (flink-docker/Dockerfile), so the e2e
# tests exercise the same step the image build runs.
#
# usage: fetch-jars.sh [--artifact NAME] [--transitive] OUTPUT_DIR
#   NAME          a constant of conf/versions.py holding group:artifact:version
#                 (default KAFKA_CONNECTOR_ARTIFACT)
#   --transitive  also copy the artifact's runtime dependencies (the Kafka broker needs them;
#                 the connector is a shaded "sql" jar and must come alone)
# environment:
#   PYTHON        interpreter that reads conf/versions.py (default python3)
#   MVN           Maven executable (default mvn)
#
# Idempotent: OUTPUT_DIR/.complete records the coordinates fetched; when they match, nothing is
# downloaded. The jars are written to a temporary folder first and moved into place only when
# Maven succeeded, so an interrupted run never leaves a half-filled OUTPUT_DIR behind.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
versions_py="$here/../conf/versions.py"
python=${PYTHON:-python3}
mvn=${MVN:-mvn}
name=KAFKA_CONNECTOR_ARTIFACT
transitive=false
out=

die() { echo "fetch-jars.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --artifact) [ $# -ge 2 ] || die "--artifact needs a name"; name=$2; shift 2 ;;
    --transitive) transitive=true; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$out" ] || die "one OUTPUT_DIR only"; out=$1; shift ;;
  esac
done
[ -n "$out" ] || die "usage: fetch-jars.sh [--artifact NAME] [--transitive] OUTPUT_DIR"
[ -f "$versions_py" ] || die "$versions_py not found (run the script from the project tree)"
command -v "$python" >/dev/null || die "'$python' not found: set PYTHON to a Python 3 interpreter"

# runpy executes versions.py alone: no import of the conf package and its dependencies.
coords=$("$python" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])[sys.argv[2]])' \
  "$versions_py" "$name" 2>/dev/null) || die "no constant $name in $versions_py"
IFS=: read -r group artifact version extra <<<"$coords"
if [ -z "$group" ] || [ -z "$artifact" ] || [ -z "$version" ] || [ -n "$extra" ]; then
  die "$name = '$coords' is not group:artifact:version"
fi

marker="$out/.complete"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$coords" ]; then
  echo "fetch-jars.sh: $coords already in $out" >&2
  exit 0
fi

command -v "$mvn" >/dev/null || die "'$mvn' not found: install Maven (apt-get install -y maven)"
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.fetch-jars.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A throw-away POM that depends on the artifact: copy-dependencies then resolves it (and, with
# --transitive, its runtime closure) exactly as Maven would for a real build.
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.flowlearn</groupId><artifactId>fetch-$artifact</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>$group</groupId><artifactId>$artifact</artifactId>
      <version>$version</version></dependency>
  </dependencies>
</project>
POM

echo "fetch-jars.sh: fetching $coords with Maven into $out" >&2
args=(-q -B --strict-checksums -f "$work/pom.xml"
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies
      "-DoutputDirectory=$work/jars" -DincludeScope=runtime)
[ "$transitive" = true ] || args+=(-DexcludeTransitive=true)
# Maven's own output goes to stderr: stdout stays free for callers.
"$mvn" "${args[@]}" >&2 || die "Maven could not fetch $coords"

compgen -G "$work/jars/$artifact-$version*.jar" >/dev/null \
  || die "Maven finished but $artifact-$version*.jar is not in its output"
echo "$coords" >"$work/jars/.complete"
rm -rf "$out"
mv "$work/jars" "$out"
