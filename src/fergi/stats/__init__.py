"""Statistics of reactions against survey answers (paper Sec. 6.1)."""

from fergi.stats._reaction import reaction_statistics, significant_aus

__all__ = ["reaction_statistics", "significant_aus"]
