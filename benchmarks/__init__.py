"""Side-by-side benchmarks of the core against diffusers and MONAI: `python -m benchmarks.<name>`.

Each benchmark prints a markdown table of ratios against the best peer measured in the same run and
writes it, with the machine and the regenerating command, to `docs/benchmarks/<name>.md`.
"""
