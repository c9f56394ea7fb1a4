"""The MapReduce lab on the host: `distlab mr ...`, the `mapreduce` workload and the `output`
check, registered by `distlab.mapreduce.lab`. Talks to the master (nodes.mapreduce.master)
only through its gRPC service, with the lab credential; never touches the shared volume."""
