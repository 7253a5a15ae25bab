#!/usr/bin/env bash
# Runs authtap's tests: installs what they need when it is missing (redis-server;
# chromium for the asynqmon browser test), then vets and tests every package.
# Usage: ./test.sh [go test flags...]   e.g. ./test.sh -run TestSpool ./caddymodule/...
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ((${#need[@]})); then
	echo "test.sh: installing ${need[*]}"
	if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

go vet ./...
if [ $# -eq 0 ]; then set -- ./...; fi
go test -count=1 -timeout 20m "$@"
