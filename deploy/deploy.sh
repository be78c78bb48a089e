#!/bin/sh
# deploy.sh RELEASE_DIR - put new code live without stopping the jobs that run.
#
#   1. preflight the new release on its own (`phoenix check`): a release that
#      does not import, whose configuration is invalid, or that lacks a job
#      target pending or running jobs use, stops here and nothing changes;
#   2. compile its bytecode (`python -m compileall`): the new master image
#      then loads it instead of compiling every module of the release from
#      source while the heartbeat socket goes unread (the blind window);
#      PYTHONDONTWRITEBYTECODE=1 does not stop this, it only stops imports
#      from writing it;
#   3. switch the `current` symlink to it, atomically;
#   4. `phoenix reload --wait`: the master (started in `current`, see
#      deploy/phoenix.service) replaces itself with the new code and the jobs
#      keep running; it exits 0 once the new master is ready, 1 with the reason
#      if the master refused or failed (the old master then keeps running);
#   5. on failure, switch `current` back and fail the deploy (exit 1).
#
# Settings (environment):
#   PHOENIX_APP        the app, e.g. myapp.jobs:app                   (required)
#   APP_ROOT           holds `current` and `releases/`                (default /srv/myapp)
#   PHOENIX_STATE_DIR  the running master's state directory           (default /var/lib/myapp/phoenix)
#   PHOENIX            the phoenix command                            (default $APP_ROOT/venv/bin/phoenix)
#   PYTHON             the interpreter Phoenix runs on, for compileall (default: python beside
#                      $PHOENIX, else the one its first line names)
#   RELOAD_TIMEOUT     seconds to wait for the new master             (default 120)
#   DEPLOY_FORCE       1: deploy even if the release lacks job targets that
#                      queued jobs use (those jobs then fail)         (default 0)
#
# Example:
#   git -C /srv/myapp/repo archive --prefix=r42/ v42 | tar -x -C /srv/myapp/releases
#   PHOENIX_APP=myapp.jobs:app deploy/deploy.sh /srv/myapp/releases/r42
set -eu

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 RELEASE_DIR" >&2
    exit 2
fi
: "${PHOENIX_APP:?set PHOENIX_APP, e.g. myapp.jobs:app}"
APP_ROOT=${APP_ROOT:-/srv/myapp}
STATE_DIR=${PHOENIX_STATE_DIR:-/var/lib/myapp/phoenix}
PHOENIX=${PHOENIX:-$APP_ROOT/venv/bin/phoenix}

# The interpreter the `phoenix` script runs on: `python` beside it (a venv's bin/), else the one its
# first line names (pip's /usr/local/bin/phoenix, pipx: `#!/path/python`, `#!/usr/bin/env python3`,
# or pip's `#!/bin/sh` then `'''exec' "/path/python"` for a long path). Empty when none is found.
python_of() {
    script=$(command -v "$1" 2>/dev/null || echo "$1")
    if [ -x "$(dirname "$script")/python" ]; then
        echo "$(dirname "$script")/python"
        return
    fi
    first=$(head -n 1 "$script" 2>/dev/null | sed -n 's/^#![[:space:]]*//p')
    # shellcheck disable=SC2086 # split on purpose: the interpreter and its argument
    set -- $first
    case ${1:-} in
        */env) interpreter=${2:-} ;;
        */sh) interpreter=$(sed -n "2s/^'''exec' \"\\([^\"]*\\)\".*/\\1/p" "$script") ;;
        *) interpreter=${1:-} ;;
    esac
    if [ -n "$interpreter" ] && "$interpreter" -c 'import sys' >/dev/null 2>&1; then
        command -v "$interpreter"
    fi
}
PYTHON=${PYTHON:-$(python_of "$PHOENIX")}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-120}
FORCE=
if [ "${DEPLOY_FORCE:-0}" = 1 ]; then FORCE=--force; fi

release=$(cd "$1" && pwd -P)
current=$APP_ROOT/current
previous=$(readlink "$current" 2>/dev/null || true)

switch_to() {  # atomic: a new symlink renamed over the old one (never a moment without `current`)
    ln -sfn "$1" "$current.new"
    mv -fT "$current.new" "$current"
}

echo "deploy: checking $release"
if ! (cd "$release" && "$PHOENIX" check "$PHOENIX_APP" --state-dir "$STATE_DIR" $FORCE); then
    echo "deploy: FAILED: $release does not pass \`phoenix check\`; nothing was changed" >&2
    exit 1
fi

# After the check: a release that does not import has been refused with its reason by now. A file
# that does not compile (one no job imports) only costs its own compilation at import.
if [ -z "$PYTHON" ] || ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "deploy: warning: no Python interpreter found for $PHOENIX (${PYTHON:-none beside it, none in its" \
         "first line}): the bytecode of $release is not compiled, the new image compiles it at import;" \
         "set PYTHON= to the interpreter Phoenix runs on" >&2
elif ! "$PYTHON" -m compileall -q "$release" >/dev/null; then
    echo "deploy: warning: some files of $release do not compile (\`$PYTHON -m compileall $release\` names them);" \
         "they are compiled at import" >&2
fi

switch_to "$release"
echo "deploy: $current -> $release; replacing the master"
if "$PHOENIX" reload --wait --timeout "$RELOAD_TIMEOUT" --state-dir "$STATE_DIR" $FORCE; then
    echo "deploy: done, $release is live"
    exit 0
fi
echo "deploy: FAILED: the master did not take $release (reason above)" >&2
if [ -n "$previous" ]; then
    switch_to "$previous"
    echo "deploy: $current -> $previous again" >&2
    # A new image that could not load the release after its check passed runs
    # degraded (it watches the running jobs but starts none): load the
    # previous release into it again.
    if "$PHOENIX" status --json --state-dir "$STATE_DIR" | grep -q '"state": "degraded"'; then
        echo "deploy: the master runs degraded; reloading $previous" >&2
        if "$PHOENIX" reload --wait --timeout "$RELOAD_TIMEOUT" --state-dir "$STATE_DIR" $FORCE; then
            echo "deploy: the master runs $previous again" >&2
        else
            echo "deploy: the master could not load $previous either: it stays degraded, see its log" >&2
        fi
    else
        echo "deploy: the master keeps running the previous code" >&2
    fi
fi
exit 1
