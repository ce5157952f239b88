"""ortserve trainer: trains, evaluates and exports models into the model repository."""
