"""HTTP routers: parse, call the model service, shape the response. Nothing else."""
