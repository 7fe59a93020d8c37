"""Translating an AR model: wrap and save it (`convert`), then finetune it (`train`, with its config in
`config`, its data in `data` and the checks run before any weight is read in `preflight`); `adapters` keeps a
LoRA translation as its difference from the source."""
