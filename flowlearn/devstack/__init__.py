"""The local stack as plain processes, and control of the job on it."""
