"""Training/eval data for the training loop: a checkpointable Grain mixture over packed token shards.

    it = make_train_iterator(data_cfg, seq_len=T, batch_size=B, seed=0)   # {"tokens": int32 [B/P, T+1]}
    batches = make_eval_batches(data_cfg, seq_len=T, batch_size=B, num_batches=N)
    tok = tokenizer_for(data_cfg)

Shards hold one token stream per domain and split (documents joined by EOS); it is
re-cut here into windows of T+1 tokens with stride T, so each token is a target once
and any seq_len works with the same shards.
"""

import os
from pathlib import Path

import grain
import numpy as np

from nested_jax.data import packing, presets, sources
from nested_jax.data.tokenizer import Tokenizer, load_tokenizer


class WindowSource:
    """Random access to windows [i*T, i*T + T + 1) of the token stream stored in consecutive shards."""

    def __init__(self, paths: list[Path], seq_len: int, name: str = ""):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
        self.paths = [str(p) for p in paths]
        self.seq_len = seq_len
        sizes = [np.load(p, mmap_mode="r").size for p in self.paths]
        self.offsets = np.cumsum([0] + sizes)
        self.num_tokens = int(self.offsets[-1])
        self._len = max(0, (self.num_tokens - 1) // seq_len)
        if self._len == 0:
            raise ValueError(
                f"{name or 'data'} has {self.num_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}. "
                "Fix: lower seq_len, add data, or drop this domain with data_cfg.mixture."
            )
        self._arrays = None

    def __len__(self) -> int:
        return self._len

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"} | {"_arrays": None}

    def __getitem__(self, index: int) -> np.ndarray:
        if self._arrays is None:
            self._arrays = [np.load(p, mmap_mode="r").reshape(-1) for p in self.paths]
        start = int(index) * self.seq_len
        stop = start + self.seq_len + 1
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        lo = start - int(self.offsets[k])
        piece = self._arrays[k][lo:lo + self.seq_len + 1]
        if len(piece) == self.seq_len + 1:
            return np.array(piece, dtype=np.int32)
        parts = [piece]
        need = stop - start - len(piece)
        while need > 0:
            k += 1
            parts.append(self._arrays[k][:need])
            need -= len(parts[-1])
        return np.concatenate(parts).astype(np.int32)


def _cache_dir(data_cfg) -> Path:
    d = data_cfg.cache_dir or os.environ.get("NESTED_JAX_CACHE") or "~/.cache/nested_jax"
    return Path(d).expanduser()


def tokenizer_for(data_cfg) -> Tokenizer:
    """The Tokenizer the data is built with (data_cfg.tokenizer)."""
    return load_tokenizer(data_cfg.tokenizer)


def prepared_dir(data_cfg, progress: bool = True) -> tuple[Path, dict]:
    """(directory, stats) of the prepared data for data_cfg, preparing and caching it on first use."""
    tok = tokenizer_for(data_cfg)
    ds = str(data_cfg.dataset)
    if not ds:
        raise ValueError("data_cfg.dataset is empty. Fix: set it to 'novels', a preset, a prepared dir or a manifest.")
    if ds in presets.PRESETS:
        manifest = presets.get_preset(ds)
    else:
        p = Path(ds).expanduser()
        if p.name == packing.STATS_FILE:
            p = p.parent
        if p.is_dir():
            root, stats = p, packing.read_stats(p)
            _check_tokenizer(root, stats, tok, data_cfg)
            return root, stats
        if not p.exists():
            raise FileNotFoundError(
                f"data_cfg.dataset = {ds!r} is neither a preset ({', '.join(sorted(presets.PRESETS))}) nor an "
                "existing path. Fix: use a preset name, a prepared directory, or a manifest .json/.py file."
            )
        manifest = sources.load_manifest(p)
    root = _cache_dir(data_cfg) / "prepared" / f"{manifest.name}-{tok.sha256[:12]}-{manifest.corpus_sha256()[:12]}"
    if not (root / packing.STATS_FILE).is_file():
        from nested_jax.data import prepare  # deferred: only needed on a cache miss
        print(f"[nested_jax.data] preparing {manifest.name!r} with tokenizer {tok.name} into {root} (first use)")
        prepare.prepare(manifest, root, tokenizer=tok, progress=progress)
    stats = packing.read_stats(root)
    _check_tokenizer(root, stats, tok, data_cfg)
    return root, stats


def _check_tokenizer(root: Path, stats: dict, tok: Tokenizer, data_cfg) -> None:
    built = stats["tokenizer"]
    if built["sha256"] != tok.sha256:
        raise ValueError(
            f"The shards in {root} were written by tokenizer {built['name']!r} (sha256 {built['sha256'][:12]}…, "
            f"vocab {built['vocab_size']}), but data_cfg.tokenizer = {data_cfg.tokenizer!r} is sha256 "
            f"{tok.sha256[:12]}… (vocab {tok.vocab_size}). Fix: set data_cfg.tokenizer to the one the shards were "
            f"built with, or re-run `python -m nested_jax.data prepare ... --tokenizer {data_cfg.tokenizer}`."
        )


def check_vocab(data_cfg, model_vocab_size: int, allow_padding: bool = False) -> None:
    """Raise if the model's vocabulary does not match the tokenizer's (padding allowed if asked)."""
    n = tokenizer_for(data_cfg).vocab_size
    ok = model_vocab_size >= n if allow_padding else model_vocab_size == n
    if not ok:
        raise ValueError(
            f"Model vocab_size = {model_vocab_size} but tokenizer {data_cfg.tokenizer!r} has {n} pieces. "
            f"Fix: set the model's vocab_size to {n} (or pick the tokenizer that matches the model)."
        )


def parse_mixture(spec: str) -> dict[str, float]:
    """'novels=0.8,math=0.2' (or 'novels:0.8 math:0.2') -> {'novels': 0.8, 'math': 0.2}."""
    out = {}
    for item in spec.replace(" ", ",").split(","):
        if not item:
            continue
        name, sep, value = item.replace(":", "=").partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or out.get(name, 0) < 0:
            raise ValueError(f"Bad mixture entry {item!r} in {spec!r}; write 'domain=weight,...' with weights >= 0.")
    return out


def mixture_weights(data_cfg, stats: dict, split: str = "train") -> dict[str, float]:
    """Domain -> weight for `split`: the manifest's weights, overridden by data_cfg.mixture; zeros dropped."""
    have = [d for d, splits in stats["domains"].items() if split in splits]
    weights = {d: float(stats["weights"].get(d, 1.0)) for d in have}
    if data_cfg.mixture:
        override = parse_mixture(data_cfg.mixture)
        unknown = set(override) - set(stats["domains"])
        if unknown:
            raise ValueError(f"data_cfg.mixture names unknown domain(s) {sorted(unknown)}; the data has {sorted(stats['domains'])}.")
        weights = {d: override.get(d, weights[d]) for d in have}
    weights = {d: w for d, w in weights.items() if w > 0}
    if not weights:
        raise ValueError(f"No domain with positive weight and a {split!r} split (mixture={data_cfg.mixture!r}, domains={have}).")
    return weights


def _windows(root: Path, stats: dict, domain: str, split: str, seq_len: int) -> WindowSource:
    return WindowSource(packing.shard_paths(root, stats, domain, split), seq_len, name=f"{root}: {domain}/{split}")


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside `absl.app.run` mark them parsed (defaults)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _as_example(tokens: np.ndarray) -> dict:
    return {"tokens": tokens}


def make_train_iterator(data_cfg, *, seq_len: int, batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1):
    """An infinite, checkpointable Grain DatasetIterator of {"tokens": int32 [batch_size // process_count, seq_len + 1]}.

    `batch_size` is global: process p gets elements p, p + P, p + 2P, … of the global mixture,
    so the union over processes of batch k equals batch k of a single-process run.
    """
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    root, stats = prepared_dir(data_cfg)
    weights = mixture_weights(data_cfg, stats, "train")
    parts = []
    for i, domain in enumerate(weights):
        ds = grain.MapDataset.source(_windows(root, stats, domain, "train", seq_len))
        if data_cfg.shuffle:
            ds = ds.shuffle(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        parts.append(ds.repeat())
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(weights.values()))
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size // process_count, drop_remainder=True).map(_as_example)
    opts = grain.ReadOptions(num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.prefetch_buffer)
    it_ds = ds.to_iter_dataset(read_options=opts)
    if data_cfg.num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    return iter(it_ds)


def make_eval_batches(data_cfg, *, seq_len: int, batch_size: int, num_batches: int,
                      split: str = "valid", domain: str | None = None) -> list[np.ndarray]:
    """The first num_batches * batch_size windows of `split` (one domain, or the weighted mixture), unshuffled."""
    root, stats = prepared_dir(data_cfg)
    if domain is not None:
        if domain not in stats["domains"]:
            raise ValueError(f"Unknown domain {domain!r}; the data has {sorted(stats['domains'])}.")
        weights = {domain: 1.0}
    else:
        weights = mixture_weights(data_cfg, stats, split)
    parts = [grain.MapDataset.source(_windows(root, stats, d, split, seq_len)) for d in weights]
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(weights.values()))
    need = num_batches * batch_size
    if len(ds) < need:
        raise ValueError(
            f"The {split!r} split of {sorted(weights)} has {len(ds)} windows of {seq_len + 1} tokens; "
            f"{num_batches} batches of {batch_size} need {need}. Fix: lower num_batches, batch_size or seq_len."
        )
    rows = [ds[i] for i in range(need)]
    return [np.stack(rows[b * batch_size:(b + 1) * batch_size]) for b in range(num_batches)]
