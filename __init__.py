"""specserve: an inference server that shows speculative decoding working: lossless, measured, batched.

This folder is the `specserve` package (pyproject maps `specserve` to the repository root), so
`decoding/`, `server/`, ... import as `specserve.decoding`, `specserve.server`, ... Keep this file
free of imports: `specserve --help` must not load torch.
"""

__version__ = "0.1.0"
