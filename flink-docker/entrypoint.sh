#!/usr/bin/env bash
# The job image's entrypoint: Flink's own (/docker-entrypoint.sh), with the Python worker pool
# (jobs/python_worker_pool.py) started first when the container is a TaskManager: compose runs
# `taskmanager`, the Kubernetes operator a command line with kubernetes-taskmanager.sh in it
# (kubernetes.entry.path names this script). The pool forks the TaskManager's Python workers;
# if it is not running, python.executable's launcher starts the interpreter instead.
set -euo pipefail

case " $* " in
  *taskmanager*)
    if [ -n "${FLOWLEARN_WORKER_POOL:-}" ]; then
      python3 /opt/flowlearn/bin/python_worker_pool.py serve --socket "$FLOWLEARN_WORKER_POOL" &
    fi
    ;;
esac
exec /docker-entrypoint.sh "$@"
