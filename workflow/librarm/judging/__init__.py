"""The judge: prompts and verdict parsing, the think split, rewards, judge metrics and comparisons."""
