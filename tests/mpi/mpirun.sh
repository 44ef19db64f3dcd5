#!/usr/bin/env bash
# mpirun as the MPI tests (and a user in a container) need it:
#   --allow-run-as-root (OMPI_ALLOW_RUN_AS_ROOT*): containers run as root, Open MPI refuses it
#   --oversubscribe: more ranks than cores is allowed (2 vCPUs shared with other jobs)
#   mpi_yield_when_idle 1: a rank waiting in a collective yields its core instead of spinning
#     (with 2 cores shared by 2 ranks and other jobs, spinning took 10 of 15 s in a test)
#   --bind-to none: ranks are not pinned, so tests running side by side do not share a core
#   btl_vader_single_copy_mechanism none: shared-memory copies without CMA (process_vm_readv),
#     which containers often forbid (ptrace restrictions)
#   LeakSanitizer: Open MPI's own allocations are suppressed (lsan-openmpi.supp); tapegrad's
#     own leaks are still reported.
# Usage: mpirun.sh [--check-built yes|no] MPIRUN-ARGS...   (exits 77 when MPI is missing)
#        mpirun.sh [--check-built yes|no] --exec PROGRAM ARGS...   (a test script, not mpirun)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--check-built" ]; then
    if [ "$2" != yes ]; then
        echo "tapegrad was built without the mpi feature: skipped"
        exit 77
    fi
    shift 2
fi
if ! command -v mpirun >/dev/null; then
    echo "mpirun is not installed (openmpi-bin): skipped"
    exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mpi_yield_when_idle=1
export LSAN_OPTIONS="suppressions=$here/lsan-openmpi.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# For the suppressions to see Open MPI's frames: unwind allocation stacks with DWARF (Open MPI
# is built without frame pointers, so the fast unwinder stops at its first frame) and keep
# its plugins loaded at MPI_Finalize (an unloaded plugin's frames have no library name).
if [ -n "${ASAN_OPTIONS:-}" ]; then
    export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
fi
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
if [ "${1:-}" = "--exec" ]; then
    shift
    exec "$@"
fi
exec mpirun --oversubscribe --bind-to none "$@"
