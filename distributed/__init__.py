"""Everything that crosses processes: process groups (process_group.py), the collectives spelled in one
place (collectives.py), gradient reductions that overlap backward (grad_sync.py), and the sharded
optimizer step with its state gathering (sharding.py)."""
