"""Exit codes of `scaling-grid`, the one place they are defined: a launcher or a job scheduler acts on them."""

EXIT_OK = 0
EXIT_FAILED = 1        # a cell (or a run) failed, or a record is damaged
EXIT_BAD_INPUT = 2     # a bad argument, config, spec or store: nothing was run
EXIT_DIVERGED = 3      # `train`: the run diverged
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): run the same command again to resume
EXIT_PREEMPTED = 143   # SIGTERM (128 + SIGTERM): a checkpoint was saved; a requeue loop runs it again
# a process of a multi-process job was lost: relaunch every process to resume. trainer/peers.py exits
# with it from its own thread (where it sees jax.distributed's verdict), so the value lives there.
from scaling_grid.trainer import EXIT_PEER_LOST  # noqa: E402,F401 - stdlib only, no JAX
