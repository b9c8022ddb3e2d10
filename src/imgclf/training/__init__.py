"""Training: the loop as named steps (`loop`), the callbacks that measure each epoch and keep
the best model (`callbacks`), and the resumable checkpoint (`checkpoint`)."""
