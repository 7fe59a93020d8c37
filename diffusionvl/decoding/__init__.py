"""Block decoding (SPEC §3): the engine (`engine`, its rows in `rows`, its cache in `kv_cache`), the decoding
config (`config`), the unmasking policies and sampling (`policies`, `sampling`), prompt layout (`prompts`), what
a decoder returns (`outputs`), the slow reference decoder (`reference`) and the baselines it is compared with
(`baselines`). It reads a model only through its duck-typed interface (backbone, special_tokens, block_size)."""
