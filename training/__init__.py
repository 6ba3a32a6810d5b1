"""The parts the training loop is wired from: config, schedules, checkpoints, run outputs, processes."""
