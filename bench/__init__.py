"""`make bench`: finetune's training throughput against TRL on the machine at hand, side by side."""
