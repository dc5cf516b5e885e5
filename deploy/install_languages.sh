#!/usr/bin/env bash
# The compilers and runtimes the evaluation sandbox runs model-written programs with (evaluation/languages.py
# names each language's packages; tests/test_eval_multiple.py checks this list against it), plus util-linux's
# `unshare` for the sandbox itself. Debian / Ubuntu, as root. Installs only what is missing, so a prepared
# machine needs no network; used by .ci/run and the Dockerfile.
set -euo pipefail
packages=(util-linux g++ libssl-dev openjdk-17-jdk-headless libjavatuples-java php-cli nodejs node-typescript
          mono-mcs mono-runtime bash bc rustc golang-go)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    rm -rf /var/lib/apt/lists/*
fi
