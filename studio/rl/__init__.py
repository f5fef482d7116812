"""Reinforcement-learning fine-tuning with anchor-aware credit (arXiv 2510.13554).

- `studio.rl.losses`: policy losses on token tensors (GRPO / PPO-clip, DAPO, CISPO) and group advantages;
- `studio.rl.credit`: per-token credit gamma from a model's preplan-and-anchor rhythm, and its baselines.
"""
