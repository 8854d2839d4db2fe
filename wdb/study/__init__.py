"""The study: tasks (train, evaluate), evaluation, stored outputs, the generator framework."""
