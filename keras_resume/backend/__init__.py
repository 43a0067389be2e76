"""Everything that depends on one Keras backend or on Keras internals, in one place.

The rest of keras_resume calls only this package (`from keras_resume import
backend; backend.to_numpy(...)`); no other module imports `keras.src`, `jax`,
`tensorflow` or `torch` (tests/test_layout.py checks it). Supporting another
backend or another Keras release means changing this package alone. One
module per concern, each importing only those below it, never this one:

  core             which backend runs, the versions a checkpoint records
  collectives      the processes of a multi-process job and their collectives
  arrays           variable values as host arrays: copies, snapshots, shards, replicas
  weights_walk     Keras's `.weights.h5` layout, recorded by `save_weights`' own walk
  optimizer_build  the model's optimizers: where saved, what built on, steps applied
  weights_file     the `.weights.h5` file written and read outside `save_weights`
  rng              random generators owned by the backend (TensorFlow, torch)
  seeds            Keras's SeedGenerators: the model's, the global one, the data layers'
  pipelines        the data pipeline `fit` reads, through its `EpochIterator`
  enqueuer         `EnqueuerWatch`: the batches a PyDataset's enqueuer prefetched
  fit_loop         the training loop inside `model.fit`, callbacks, strategies

The names below are what the rest of keras_resume and its tests use; the
private ones (`as` themselves) are read by tests/test_keras_contract.py and
tests/test_multidevice.py.
"""

from keras_resume.backend.arrays import (
    SNAPSHOT_MODES,
    Shards,
    array_from_regions,
    assign_replica_values,
    check_snapshot_mode,
    copy_into,
    device_snapshot,
    has_process_shards,
    read_int,
    replica_values,
    replicas_differ,
    sharded_across_processes,
    sync_state,
    to_host,
    to_numpy,
)
from keras_resume.backend.arrays import _bytes_per_device as _bytes_per_device
from keras_resume.backend.arrays import _host_view as _host_view
from keras_resume.backend.collectives import (
    any_process,
    barrier,
    broadcast_int,
    process_count,
    process_index,
)
from keras_resume.backend.core import _tensorflow_loaded as _tensorflow_loaded
from keras_resume.backend.core import name, versions
from keras_resume.backend.enqueuer import EnqueuerWatch
from keras_resume.backend.fit_loop import (
    MonitorCallback,
    build_from_data,
    build_metrics,
    check_strategy,
    find_epoch_iterator,
    fit_callbacks,
    in_fit,
    metric_variables,
    monitor_mode,
    print_msg,
    set_initial_epoch,
    skip_batches,
    untrained_result,
)
from keras_resume.backend.optimizer_build import (
    applied_steps,
    build_optimizer,
    built_on,
    optimizers,
)
from keras_resume.backend.pipelines import (
    batches_per_epoch,
    cache_ops,
    describe_generator,
    enqueuer_of,
    is_end_of_data,
    iterators_draw_lazily,
    open_iterator,
    pipeline_datasets,
    pipeline_variables,
    py_dataset_of,
    python_generator_of,
    tf_dataset_of,
    uses_persistent_iterator,
)
from keras_resume.backend.rng import _global_seed as _global_seed
from keras_resume.backend.rng import _tf_global_generator as _tf_global_generator
from keras_resume.backend.rng import (
    capture_backend_rng,
    capture_generators,
    pipeline_generators,
    restore_backend_rng,
    restore_generators,
)
from keras_resume.backend.seeds import (
    GLOBAL_SEED_GENERATOR_NAME,
    data_layers_with_seed_generators,
    existing_global_seed_generator,
    global_seed_generator,
    layer_seed_generators,
    layers_of,
    live_seed_generators,
    seed_generators,
    seed_generators_reading,
    seed_state,
)
from keras_resume.backend.weights_file import (
    assign_weights,
    read_weights,
    sharded_entries,
    write_weights,
)
from keras_resume.backend.weights_walk import (
    WeightEntries,
    WeightTargets,
    optimizer_path,
    snapshot_weights,
    value_spec,
    weight_targets,
    weights_layout,
)

__all__ = [
    "EnqueuerWatch",
    "GLOBAL_SEED_GENERATOR_NAME",
    "MonitorCallback",
    "SNAPSHOT_MODES",
    "Shards",
    "WeightEntries",
    "WeightTargets",
    "any_process",
    "applied_steps",
    "array_from_regions",
    "assign_replica_values",
    "assign_weights",
    "barrier",
    "batches_per_epoch",
    "broadcast_int",
    "build_from_data",
    "build_metrics",
    "build_optimizer",
    "built_on",
    "cache_ops",
    "capture_backend_rng",
    "capture_generators",
    "check_snapshot_mode",
    "check_strategy",
    "copy_into",
    "data_layers_with_seed_generators",
    "describe_generator",
    "device_snapshot",
    "enqueuer_of",
    "existing_global_seed_generator",
    "find_epoch_iterator",
    "fit_callbacks",
    "global_seed_generator",
    "has_process_shards",
    "in_fit",
    "is_end_of_data",
    "iterators_draw_lazily",
    "layer_seed_generators",
    "layers_of",
    "live_seed_generators",
    "metric_variables",
    "monitor_mode",
    "name",
    "open_iterator",
    "optimizer_path",
    "optimizers",
    "pipeline_datasets",
    "pipeline_generators",
    "pipeline_variables",
    "print_msg",
    "process_count",
    "process_index",
    "py_dataset_of",
    "python_generator_of",
    "read_int",
    "read_weights",
    "replica_values",
    "replicas_differ",
    "restore_backend_rng",
    "restore_generators",
    "seed_generators",
    "seed_generators_reading",
    "seed_state",
    "set_initial_epoch",
    "sharded_across_processes",
    "sharded_entries",
    "skip_batches",
    "snapshot_weights",
    "sync_state",
    "tf_dataset_of",
    "to_host",
    "to_numpy",
    "untrained_result",
    "uses_persistent_iterator",
    "value_spec",
    "versions",
    "weight_targets",
    "weights_layout",
    "write_weights",
]
