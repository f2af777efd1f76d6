"""Several agents as one CNET through etcd: the etcd client, this node's membership, the node
directory, calls passed through to other nodes."""
