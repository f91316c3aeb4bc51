#!/usr/bin/env bash
# Submit the flowlearn job to the session cluster with `flink run -d`, unless a job of the same
# name is already running: the compose stack runs this once per `docker compose up`, and a
# restart of the stack must not start a second copy of the job (two writers on one Redis
# prefix and one transactional id prefix).
#
# The job reads its settings where it is built, here: conf/defaults.toml, then the TOML file
# named by FLOWLEARN_CONFIG, then FLOWLEARN__SECTION__KEY variables. Its packages and the Kafka
# connector are installed in the image, hence no -pyfs and no -j.
#
# environment:
#   FLOWLEARN_FROM_SAVEPOINT  resume from this savepoint or retained checkpoint (flink run -s)
set -euo pipefail

job_name=$(python3 -c 'from flowlearn.conf import load_settings; print(load_settings().job.name)')

# `flink list -r` prints "<date> : <job id> : <name> (RUNNING)" per running job.
if flink list -r | grep -Fq -- " : ${job_name} ("; then
  echo "submit-job.sh: '${job_name}' is already running; nothing to submit" >&2
  exit 0
fi

args=(run -d -pym flowlearn.jobs.online_learning)
if [ -n "${FLOWLEARN_FROM_SAVEPOINT:-}" ]; then
  args+=(-s "$FLOWLEARN_FROM_SAVEPOINT")
fi
exec flink "${args[@]}"
