"""The editing methods, each a config dataclass and a function that reads like its paper."""
