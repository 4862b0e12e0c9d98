#!/bin/sh
# The job: it knows its lock through the environment consullock gives it.
set -eu
echo "running with lock ${CONSULLOCK_KEY} (fencing token ${CONSULLOCK_FENCING_TOKEN})"
sleep 5
echo "done"
