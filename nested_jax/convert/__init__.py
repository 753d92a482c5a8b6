"""Model conversions: Hugging Face Llama-family folders ↔ nested_jax workdirs, and level
stacking of a transformer into HOPE-Attention (`python -m nested_jax.convert --help`)."""
