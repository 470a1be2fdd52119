#!/usr/bin/env bash
# Run a grid on machines that reach each other over SSH, one process per machine, all training each
# cell together (the first host is process 0 and the coordinator):
#   scripts/ssh.sh --dir /shared/scaling-grid gpu1 gpu2 gpu3 -- configs/my-grid.yaml --store /shared/stores/g
# The checkout must be at --dir on every host (a shared filesystem, or a copy), with a store every host
# sees. First each host installs there (scripts/install.sh), one after the other so a shared checkout
# is installed once; then every host starts `scaling-grid run ... --distributed --coordinator HOST0:PORT
# --num-processes N --process-id i`, and the script waits for all: its exit code is the first
# non-zero one. Ctrl-C or a SIGTERM stops them all (each saves, exit 143); run it again to resume.
set -euo pipefail
usage() { echo "usage: scripts/ssh.sh [--print] [--dir DIR] [--coordinator HOST:PORT] HOST... -- SPEC [run flags...]"; }
PRINT=0 DIR= COORD=
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage
      echo "  --print        print the ssh commands instead of running them"
      echo "  --dir          the checkout on every host (default: this checkout's path)"
      echo "  --coordinator  process 0's address as the other hosts reach it (default: the first HOST, port 8476)"
      echo "  env: SG_EXTRAS (default cuda12), SG_PYTHON (default 3.12): what scripts/install.sh installs"
      exit 0 ;;
    --print) PRINT=1; shift ;;
    --dir|--coordinator)
      [ $# -ge 2 ] || { usage >&2; echo "ssh.sh: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --dir ]; then DIR=$2; else COORD=$2; fi; shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --coordinator=*) COORD=${1#*=}; shift ;;
    --) break ;;
    -*) usage >&2; echo "ssh.sh: unknown option $1 (options go before the hosts)" >&2; exit 2 ;;
    *) break ;;
  esac
done
HOSTS=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do HOSTS+=("$1"); shift; done
[ ${#HOSTS[@]} -ge 1 ] && [ $# -ge 2 ] || { usage >&2; echo "ssh.sh: give the hosts, then -- and the grid spec" >&2
  exit 2; }
shift  # the --
DIR=${DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
COORD=${COORD:-${HOSTS[0]##*@}:8476}  # user@host: the host
N=${#HOSTS[@]}

# --print: each command on one line, quoted for a shell, instead of running it
run() { if [ $PRINT = 1 ]; then quote "$@"; echo; else "$@"; fi; }
quote() { local a s=; for a; do [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]] || a="'${a//\'/\'\\\'\'}'"; s+="$a "; done; printf %s "${s% }"; }

for h in "${HOSTS[@]}"; do
  run ssh "$h" "cd $(quote "$DIR") && SG_PYTHON=$(quote "${SG_PYTHON:-3.12}") scripts/install.sh $(quote "${SG_EXTRAS:-cuda12}")"
done
pids=()
# SIGTERM (Ctrl-C, a scheduler) goes on to every remote process by its pid: all save and exit 143
stop() { for i in "${!HOSTS[@]}"; do ssh "${HOSTS[$i]}" "kill -TERM \$(cat /tmp/scaling-grid-ssh-$i.pid)" || true; done; }
trap stop INT TERM
for i in "${!HOSTS[@]}"; do
  cmd=(ssh "${HOSTS[$i]}" "cd $(quote "$DIR") && echo \$\$ > /tmp/scaling-grid-ssh-$i.pid && exec \
.venv/bin/scaling-grid run $(quote "$@") --distributed --coordinator $COORD --num-processes $N --process-id $i \
--no-progress")
  if [ $PRINT = 1 ]; then quote "${cmd[@]}"; echo " &"; else "${cmd[@]}" & pids+=($!); fi
done
if [ $PRINT = 1 ]; then echo wait; exit 0; fi
rc=0
for p in "${pids[@]}"; do
  while :; do  # a wait that a trapped signal interrupts is waited again
    wait "$p" && r=0 || r=$?
    kill -0 "$p" 2>/dev/null || break
  done
  [ $rc -ne 0 ] || rc=$r
done
exit $rc
