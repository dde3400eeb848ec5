"""One process of the 2-process x 2-device CPU test (see test_partitioning_multihost.py).

Usage: python partitioning_multihost_worker.py PROCESS_ID PORT OUT_DIR
Each process feeds only its own rows of the global batch (from the data
layout), runs the partitioned toy forward, gathers the output and saves it.
"""

import json
import os
import sys

import numpy as np
import jax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

import partitioning as pt
import partitioning_toy_model as T

CONFIGS = {
    # name: (num_partitions, rules); 4 devices = 2 processes x 2
    "dp": (1, pt.logical_axis_rules_dp),  # data 4 x model 1: each process 2 data rows
    "mp": (2, pt.logical_axis_rules_mp),  # data 2 x model 2: model axis inside a process
    "2d": (2, pt.logical_axis_rules_2d),
    "mp_span": (4, pt.logical_axis_rules_mp),  # data 1 x model 4: model axis spans both
}


def main():
    pid, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60
    )
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    model = T.ToyModel()
    variables = T.init_fn(model)()
    host = jax.tree_util.tree_map(np.asarray, variables["params"])
    state = pt.InferenceState.create(variables)
    tok = T.tokens(batch=8)
    report = {}
    for name, (num_partitions, rules) in CONFIGS.items():
        part = pt.PjitPartitioner(num_partitions=num_partitions, logical_axis_rules=rules, strict_rules=True)
        axes = part.get_mesh_axes(state)
        params = part.shard_host_params(host, axes.params)
        layout = part.get_data_layout(8)
        local = tok[layout.local_slice]  # only this process's rows
        batch = part.make_global_batch(local, global_batch_size=8)
        f = part.partition(lambda p, t: model.apply({"params": p}, t),
                           in_axis_resources=(axes.params, P("data")), out_axis_resources=P("data"))
        out = f(params, batch)
        full = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        np.save(os.path.join(out_dir, f"{name}_{pid}.npy"), full)
        sl, replica = part.get_local_chunk_info((8, 6), ("data", None))
        report[name] = dict(
            mesh=dict(part.mesh.shape),
            layout=[layout.batch_size, layout.shard_id, layout.num_shards, layout.is_first_host_in_replica_set],
            local_rows=[layout.local_slice.start, layout.local_slice.stop],
            chunk=[[s.start, s.stop] for s in sl] + [replica],
            local_param_bytes=int(sum(s.data.nbytes for v in params.values() for s in v.addressable_shards)),
        )
    multihost_utils.sync_global_devices("done")
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
