"""The data config (`data_cfg`) read by `nested_jax.data.loader`."""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults: the vendored novels, tokenised with the shipped 2k tokenizer on first use."""
    c = ml_collections.ConfigDict()
    c.dataset = "novels"       # "novels" | preset "sample"/"full" | prepared dir | manifest .json/.py (prepared + cached on first use)
    c.tokenizer = "novels_2k"  # shipped tokenizer name (novels_2k, novels_32k) or a SentencePiece .model path
    c.cache_dir = ""           # where presets/manifests get prepared; "" -> $NESTED_JAX_CACHE or ~/.cache/nested_jax
    c.mixture = ""             # weight override, e.g. "novels=0.8,math=0.2" ("" = the manifest's weights; 0 drops a domain)
    c.shuffle = True           # seeded shuffle of training windows, reshuffled every epoch
    c.num_workers = 0          # Grain worker processes (0 = read in the training process)
    c.read_threads = 2         # Grain prefetch threads in the training process
    c.prefetch_buffer = 4      # batches prefetched by those threads
    return c
