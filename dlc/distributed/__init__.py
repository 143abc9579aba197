"""Data-parallel training: N workers, one all-reduce of the flat gradient per step.

Each worker runs the split train step (dlc.train.step.build_split_step): the gradient graph on
its share of the global batch, then a sum all-reduce (torch.distributed, gloo on CPU), then the
update graph on the averaged gradient, identical on every worker. Launched by Ray Train
(`dlc train SPEC --workers N`) or by torchrun/SLURM (their environment variables).
"""
