"""Helper for tests/test_mpi_exec.py, run under mpiexec: PLAN TIMEOUT MODE.

The last rank never takes part in the plan: MODE "exit" quits at once (os._exit), MODE
"stall" sleeps far past TIMEOUT. The others must not hang: they give up with the
executor's timeout error (or mpiexec tears the job down when a rank exits).
"""

import os
import sys
import time

import numpy as np
from mpi4py import MPI

from taccl_py.errors import TacclError
from taccl_py.plan.xml import parse_plan
from taccl_py.runtime.mpi_exec import run_plan

plan = parse_plan(sys.argv[1])
timeout = float(sys.argv[2])
mode = sys.argv[3]
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
coll = plan.collective()
comm.Barrier()
if rank == comm.Get_size() - 1:
    if mode == "stall":
        time.sleep(10 * timeout)
    os._exit(0)
send = np.arange(coll.i_chunks * 16, dtype=np.float32) + rank
recv = np.zeros(coll.o_chunks * 16, dtype=np.float32)
try:
    run_plan(plan, comm, send, recv, timeout=timeout)
except TacclError as exc:
    print(f"taccl: error: {exc}", flush=True)
    os._exit(3)
print(f"rank {rank}: finished without the dead rank", flush=True)
os._exit(4)
