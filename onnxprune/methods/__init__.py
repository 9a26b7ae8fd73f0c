"""Channel-selection methods besides the greedy: data-free coresets (Mussay et al.),
provable filter sampling (Liebenwein et al.) and a global random ranking.

Each module computes per-channel scores; `importance` turns scores into exactly k kept
channels plus the importance weights that keep the pruned layer unbiased. `select.select`
dispatches to them.
"""
