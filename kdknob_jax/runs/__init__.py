"""What a run leaves in its workdir and how it is read back: checkpoints and identity
(checkpoints), metric writers and FLOP counts (metrics), and loading any model spec or finished
workdir (resolve)."""
