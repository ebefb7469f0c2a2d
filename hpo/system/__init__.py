"""What hpo asks of the machine and the scheduler: durable files, processes, the owner lock on a shared
filesystem, worker log handlers, SLURM commands."""
