"""Pure math: neural-memory kernels, attention, losses. No Flax modules here."""
